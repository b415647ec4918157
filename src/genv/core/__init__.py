"""Operations shared by the command line, the shell commands and the Python API."""
