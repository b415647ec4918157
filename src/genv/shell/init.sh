# genv shell integration for bash and zsh; load it with: eval "$(genv shell --init)"
# Commands that change this shell print shell code, which the function evaluates. The
# environment variable _GENV_SHELL_PID tells the program it runs under this function.

# The genv program, started directly (no PATH lookup, no Python site scan).
_genv_program() {
  __GENV__ "$@"
}

genv() {
  case "${1-}" in
    activate|deactivate|attach|detach|config)
      local _genv_code _genv_rc
      _genv_code="$(export _GENV_SHELL_PID=$$ _GENV_PS1="${PS1-}" _GENV_PS1_SET="${PS1+1}"
                    _genv_program "$@")"
      _genv_rc=$?
      if [ -n "$_genv_code" ]; then eval "$_genv_code"; fi
      return $_genv_rc
      ;;
    shell)
      (export _GENV_SHELL_PID=$$; _genv_program "$@")
      ;;
    *)
      _genv_program "$@"
      ;;
  esac
}

# IDE terminals (VS Code, JupyterLab) ask for an environment as the shell starts.
_genv_preactivate() {
  if [ "${GENV_PREACTIVATE_PROMPT-}" = 0 ]; then set -- "$@" --no-prompt; fi
  if [ -n "${GENV_PREACTIVATE_GPUS-}" ]; then set -- "$@" --gpus "$GENV_PREACTIVATE_GPUS"; fi
  if [ -n "${GENV_PREACTIVATE_GPU_MEMORY-}" ]; then
    set -- "$@" --gpu-memory "$GENV_PREACTIVATE_GPU_MEMORY"
  fi
  if [ -n "${GENV_PREACTIVATE_ENVIRONMENT_NAME-}" ]; then
    set -- "$@" --name "$GENV_PREACTIVATE_ENVIRONMENT_NAME"
  fi
  genv activate "$@"
}
if [ "${GENV_PREACTIVATE-}" = 1 ] && [ -z "${GENV_ENVIRONMENT_ID-}" ]; then
  _genv_preactivate
fi
unset -f _genv_preactivate
