# Bash completion for handoff(1): its commands, their options, the values of options that take
# one of a few words, files where a path goes, the command to run after `handoff run --`, and
# the names of the supervisors whose control sockets are in the default directory.
#
# Installed as share/bash-completion/completions/handoff, where bash-completion loads it on
# demand. It uses plain bash (compgen, compopt) and no helper of the bash-completion package,
# so `source` works without that package too.
#
# The option lists below are those of `handoff COMMAND --help`, split into options that take a
# value and flags; tests/cli/completion fails when they differ.

_handoff_values() {  # COMMAND: the options of COMMAND that take a value
  case $1 in
    run)
      echo -l --listen --ready --ready-timeout --settle --stop-signal --stop-timeout \
        --processes --restart --max-draining --watchdog --control --name --pid-file \
        --log-format --log-timestamps --proxy --upstream --max-header-size --max-body-size \
        --header-timeout --idle-timeout --response-timeout --queue-timeout --max-connections \
        --metrics --upstream-idle-timeout --upstream-max-connections \
        --tls-ticket-key-rotation --tls-cert --tls-key --notify-socket --backlog
      ;;
    reload | status | stop | reexec) echo --control --name --timeout ;;
    check)
      echo --duration -c --connections --threads --rate --mode --method --body-size \
        --connect-timeout --timeout --reload-cmd --reload-every --reload-at --reload-grace \
        --json --plot --cacert
      ;;
  esac
}

_handoff_flags() {  # COMMAND (empty: none yet): the options of COMMAND that take no value
  case $1 in
    '') echo -h --help --version ;;
    run) echo -h --help --version --nonblocking --no-forwarded-headers --tls-ticket-keys --nodelay ;;
    reload | stop | reexec) echo -h --help --version ;;
    status) echo -h --help --version --json ;;
    check) echo -h --help --version --fail-on-errors -q --quiet --insecure --tls-resume ;;
  esac
}

_handoff_commands='check run reload status stop reexec'

# Supervisors that `--name` can find: NAME.sock in the directory `handoff run` uses by default.
_handoff_supervisor_names() {
  local dir=/run/handoff socket
  [[ ${XDG_RUNTIME_DIR-} == /* ]] && dir=$XDG_RUNTIME_DIR/handoff
  for socket in "$dir"/*.sock; do
    [[ -S $socket ]] || continue
    socket=${socket##*/}
    printf '%s\n' "${socket%.sock}"
  done
}

_handoff() {
  # bash splits words at COMP_WORDBREAKS, which holds ':' and '=': `fds:tcp` arrives as
  # "fds" ":" "tcp". Glue back the pieces that COMP_LINE shows without a space between them
  # (without COMP_LINE, the words made of ':' and '=' only, with their neighbours).
  local -a words=()
  local i w line=${COMP_LINE-} pos=0 rest skipped glue=0
  [[ -n ${COMP_POINT-} ]] && line=${line:0:COMP_POINT}
  for ((i = 0; i <= COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]-}
    local adjacent=0
    if [[ -n $line ]]; then
      rest=${line:pos}
      skipped=${rest%%[![:space:]]*}
      ((i > 0 && ${#skipped} == 0)) && adjacent=1
      ((pos += ${#skipped} + ${#w}))
    elif ((i > 0)) && { ((glue)) || [[ $w =~ ^[:=]+$ ]]; }; then
      adjacent=1
    fi
    if ((adjacent)); then
      words[${#words[@]} - 1]+=$w
    else
      words+=("$w")
    fi
    [[ $w =~ ^[:=]+$ ]] && glue=1 || glue=0
  done
  local cword=$((${#words[@]} - 1))
  local word=${words[cword]} cur=${words[cword]} prev=''
  ((cword > 0)) && prev=${words[cword - 1]}
  # readline replaces only what follows the last word break (':' or '=') of the word: each
  # answer loses what comes before it, as typed.
  local breaks='' strip=''
  [[ ${COMP_WORDBREAKS-} == *:* ]] && breaks+=:
  [[ ${COMP_WORDBREAKS-} == *=* ]] && breaks+='='
  [[ -n $breaks && $word =~ ^(.*[$breaks]) ]] && strip=${BASH_REMATCH[1]}

  # The command, and whether `--` (the end of run's options) came before the cursor.
  local command='' dashdash=0 positional=0 j
  for ((j = 1; j < cword; j++)); do
    w=${words[j]}
    if [[ -z $command ]]; then
      [[ $w == -* ]] || command=$w
      continue
    fi
    if ((dashdash)); then
      positional=$((positional + 1))
      continue
    fi
    case $w in
      --) dashdash=1 ;;
      --*=*) ;;
      -*) [[ " $(_handoff_values "$command") " == *" $w "* ]] && j=$((j + 1)) ;;
      *) positional=$((positional + 1)) ;;
    esac
  done

  local lead='' candidates=''
  COMPREPLY=()
  if [[ -z $command ]]; then
    if [[ $cur == -* ]]; then
      candidates=$(compgen -W "$(_handoff_flags '')" -- "$cur")
    else
      candidates=$(compgen -W "$_handoff_commands" -- "$cur")
    fi
  elif ((dashdash)); then
    # The app and its arguments.
    if ((positional == 0)); then
      candidates=$(compgen -c -- "$cur" | sort -u)
    else
      compopt -o filenames 2>/dev/null
      candidates=$(compgen -f -- "$cur")
    fi
  else
    if [[ $cur == --*=* ]]; then
      prev=${cur%%=*}
      lead=$prev=
      cur=${cur#*=}
    elif [[ $cur == -* ]]; then
      prev=
    fi
    if [[ -n $prev && " $(_handoff_values "$command") " == *" $prev "* ]]; then
      case $prev in
        --ready) candidates=$(compgen -W 'notify tcp tcp: http:// delay:' -- "$cur") ;;
        --restart) candidates=$(compgen -W 'on-failure always never' -- "$cur") ;;
        --log-format) candidates=$(compgen -W 'text json' -- "$cur") ;;
        --log-timestamps) candidates=$(compgen -W 'auto yes no' -- "$cur") ;;
        --proxy) candidates=$(compgen -W 'http https tcp' -- "$cur") ;;
        --upstream) candidates=$(compgen -W 'fds fds:tcp port' -- "$cur") ;;
        --notify-socket) candidates=$(compgen -W 'path abstract' -- "$cur") ;;
        --mode) candidates=$(compgen -W 'keepalive close' -- "$cur") ;;
        --method) candidates=$(compgen -W 'GET POST' -- "$cur") ;;
        --stop-signal)
          candidates=$(compgen -W "$(compgen -A signal | sed -n 's/^SIG\([A-Z][A-Z0-9]*\)$/\1/p')" \
            -- "$cur")
          ;;
        --control | --pid-file | --json | --plot | --cacert | --tls-cert | --tls-key)
          compopt -o filenames 2>/dev/null
          candidates=$(compgen -f -- "$cur")
          ;;
        --listen | -l | --metrics)
          # unix:PATH names a file; other addresses are typed.
          if [[ $cur == unix:* && $cur != unix:@* ]]; then
            compopt -o filenames 2>/dev/null
            candidates=$(compgen -f -- "${cur#unix:}" | sed 's/^/unix:/')
          else
            candidates=$(compgen -W 'unix:' -- "$cur")
          fi
          ;;
        --name)
          [[ $command != run ]] &&
            candidates=$(compgen -W "$(_handoff_supervisor_names)" -- "$cur")
          ;;
      esac
    elif [[ $cur == -* ]]; then
      candidates=$(compgen -W "$(_handoff_values "$command") $(_handoff_flags "$command")" \
        -- "$cur")
    elif [[ $command == run ]]; then
      # `handoff run APP ARGS` works without `--` too, while no ARG starts with '-'.
      ((positional == 0)) && candidates=$(compgen -c -- "$cur" | sort -u)
    elif [[ $command == check && $positional == 0 ]]; then
      candidates=$(compgen -W 'http:// https://' -- "$cur")
    fi
  fi
  local candidate
  while IFS= read -r candidate; do
    [[ -n $candidate ]] || continue
    candidate=$lead$candidate
    candidate=${candidate#"$strip"}
    [[ -n $candidate ]] && COMPREPLY+=("$candidate")
  done <<<"$candidates"
  # An answer that ends in ':' or '/' is a prefix: no space after it.
  if ((${#COMPREPLY[@]} == 1)) && [[ ${COMPREPLY[0]} == *[:/] ]]; then
    compopt -o nospace 2>/dev/null
  fi
  return 0
}

complete -F _handoff handoff
