"""Package data: init.sh, the bash and zsh integration ``genv shell --init`` prints."""
