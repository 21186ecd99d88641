#!/bin/sh
# watch.sh: watch what reaches one device of a user: stored messages (inbox),
# online-only messages (the shared online subscription) and receipts/pages.
#
# Needs: mosquitto_sub (Debian: apt-get install mosquitto-clients), a running
#        mqttd, and a token for the user (go run ./mqttd token USER).
#
# Usage:  TOKEN=$(go run ./mqttd token bob) examples/scripts/watch.sh bob
#
# Env: HOST (127.0.0.1), PORT (1883), TOKEN (required).
set -eu
user=${1:?usage: watch.sh USER}
: "${TOKEN:?set TOKEN to a token of $user (go run ./mqttd token $user)}"
exec mosquitto_sub -h "${HOST:-127.0.0.1}" -p "${PORT:-1883}" -u "$user" -P "$TOKEN" -q 1 -v \
  -t "users/$user/inbox" -t "\$share/$user/users/$user/online" -t "users/$user/reply"
