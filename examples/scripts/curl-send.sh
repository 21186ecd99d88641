#!/bin/sh
# curl-send.sh: send a message over the HTTP API, as an app server or a cron
# job would, and print the receipt.
#
# Needs: curl, a running mqttd, and a token: a user token sends as that user;
#        an admin token (go run ./mqttd token -admin ops) sends as FROM.
#
# Usage:  TOKEN=$(go run ./mqttd token -admin ops) examples/scripts/curl-send.sh alice bob 'hello'
#         ONLINE=1 TOKEN=... examples/scripts/curl-send.sh alice bob
#
# Env: HTTP (http://127.0.0.1:8080), TOKEN (required), ONLINE.
set -eu
from=${1:?usage: curl-send.sh FROM TO [TEXT]}
to=${2:?usage: curl-send.sh FROM TO [TEXT]}
text=${3:-hello}
: "${TOKEN:?set TOKEN (go run ./mqttd token -admin ops)}"
if [ -n "${ONLINE:-}" ]; then
  body='{"from":"'"$from"'","to":"'"$to"'","onlineUserOnly":true,"data":{"command":"textInput"}}'
else
  body='{"from":"'"$from"'","to":"'"$to"'","data":{"text":"'"$text"'"}}'
fi
exec curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  --data "$body" "${HTTP:-http://127.0.0.1:8080}/v1/messages"
