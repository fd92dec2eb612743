#!/usr/bin/env bash
# A curl walkthrough: start the router in another terminal first (`cargo run -- serve`),
# then run this script from the repository root. It posts one event of each SmartLead shape,
# shows the status and metrics, and asks for a reload.
set -euo pipefail
ROUTER=${ROUTER:-http://127.0.0.1:8080}
# The admin endpoints need the token when it is set.
ADMIN=()
if [ -n "${SWITCHBOARD_ADMIN_TOKEN:-}" ]; then ADMIN=(-H "Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN"); fi
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "1. A reply in the shape SmartLead sends in practice (event_type: EMAIL_REPLY); posted before, it answers duplicate"
curl -sS -X POST "$ROUTER/webhooks/smartlead" -H 'content-type: application/json' \
  --data @examples/events/real_13_email_reply.json; echo

say "2. The same reply in the documented shape (event: EMAIL_REPLIED)"
curl -sS -X POST "$ROUTER/webhooks/smartlead" -H 'content-type: application/json' \
  --data @examples/events/docs_04_email_replied.json; echo

say "3. A hard bounce (the bounce type is read from the bounce text)"
curl -sS -X POST "$ROUTER/webhooks/smartlead" -H 'content-type: application/json' \
  --data @examples/events/real_15_email_bounce.json; echo

say "4. A body that is not a JSON object gets a 400 that says why"
curl -sS -X POST "$ROUTER/webhooks/smartlead" -H 'content-type: application/json' --data '[1,2]'; echo

say "5. What is loaded, and how the last reload went"
curl -sS "${ADMIN[@]}" "$ROUTER/api/status"; echo

say "6. Reload now (also happens on save, and on SIGHUP)"
curl -sS "${ADMIN[@]}" -X POST "$ROUTER/-/reload"; echo

say "7. Metrics"
curl -sS "$ROUTER/metrics" | grep -v '^#'
