# Cronium's script helpers for bash (sourced through BASH_ENV, or `source cronium.sh`).
# cronium_input, cronium_output, cronium_get_variable, cronium_set_variable,
# cronium_set_condition, cronium_event, cronium_secret, and Cronium's camelCase aliases.
CRONIUM_API_SOCKET=${CRONIUM_API_SOCKET:-/cronium/api.sock}
CRONIUM_API_TOKEN_FILE=${CRONIUM_API_TOKEN_FILE:-/cronium/token}

_cronium_call() { # METHOD PATH [JSON-BODY] -> prints the response's "value" as compact JSON
  local method=$1 path=$2 body=${3-} response status
  local args=(-sS -X "$method" --unix-socket "$CRONIUM_API_SOCKET"
              -H "Authorization: Bearer $(cat "$CRONIUM_API_TOKEN_FILE")"
              -w '\n%{http_code}' "http://cronium$path")
  if [ -n "$body" ]; then
    args+=(-H 'Content-Type: application/json' --data-binary @-)
    response=$(printf '%s' "$body" | curl "${args[@]}") || return 1
  else
    response=$(curl "${args[@]}") || return 1
  fi
  status=${response##*$'\n'}
  response=${response%$'\n'*}
  if [ "$status" -ge 400 ]; then
    printf 'cronium: %s\n' "$(printf '%s' "$response" | jq -r '.error + (if .hint then " (hint: " + .hint + ")" else "" end)' 2>/dev/null || echo "HTTP $status")" >&2
    return 1
  fi
  printf '%s' "$response" | jq -c '.value'
}

_cronium_as_json() { # a JSON value as is, anything else as a JSON string
  if printf '%s' "$1" | jq -e . >/dev/null 2>&1; then printf '%s' "$1"; else jq -cn --arg v "$1" '$v'; fi
}

_cronium_raw() { jq -r 'if type == "string" then . else tojson end'; }

cronium_input() { _cronium_call GET /v1/input; }
cronium_event() { _cronium_call GET /v1/event; }
cronium_output() { _cronium_call POST /v1/output "{\"value\": $(_cronium_as_json "$1")}" >/dev/null; }
cronium_get_variable() { _cronium_call GET "/v1/variables/$1" | _cronium_raw; }
cronium_set_variable() { _cronium_call PUT "/v1/variables/$1" "{\"value\": $(_cronium_as_json "$2")}" >/dev/null; }
cronium_set_condition() {
  case "$1" in
    true|false) _cronium_call POST /v1/condition "{\"value\": $1}" >/dev/null ;;
    *) echo "cronium: cronium_set_condition takes true or false" >&2; return 2 ;;
  esac
}
cronium_secret() { _cronium_call GET "/v1/secrets/$1" | _cronium_raw; }
cronium_getVariable() { cronium_get_variable "$@"; }
cronium_setVariable() { cronium_set_variable "$@"; }
cronium_setCondition() { cronium_set_condition "$@"; }
cronium_getSecret() { cronium_secret "$@"; }
