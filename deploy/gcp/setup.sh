#!/usr/bin/env bash
# Sets up Google Cloud for sentry-logs-collector, with gcloud:
#
#   the bucket the SecOps feed reads (uniform access, public access prevented),
#   the writer service account and its two roles on that bucket (create and read objects;
#     never delete or overwrite),
#   the Pub/Sub topic Cloud Scheduler publishes to, a dead-letter topic,
#   the push service account whose Google-signed OIDC token the component checks,
#   the push subscription to <endpoint>/pubsub with OIDC auth and audience,
#   one Cloud Scheduler job per shard,
#
# then prints the Spin variables to deploy with and the SecOps feed settings.
#
#   deploy/gcp/setup.sh --project my-project --bucket my-secops-sentry \
#       --endpoint https://collector.example.com [--dry-run]
#
# --dry-run prints every command, one per line after "+ ", and runs none (not even gcloud's
# read-only lookups). Without it, resources that already exist are kept (a second run is
# safe). See --help for every option.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/gcp/setup.sh --project ID --bucket NAME --endpoint https://HOST [options]

required:
  --project ID                  Google Cloud project
  --bucket NAME                 bucket to create for the SecOps feed
  --endpoint URL                https origin where the component is deployed; Pub/Sub pushes to URL/pubsub

options:
  --region REGION               bucket location and Cloud Scheduler region (default us-central1)
  --prefix PREFIX               object prefix, the component's gcs_prefix (default sentry/)
  --name NAME                   name of every resource created (default sentry-collector)
  --audience AUDIENCE           OIDC audience (default: the push endpoint URL)
  --schedule CRON               Cloud Scheduler schedule, 5 fields (default "*/5 * * * *")
  --time-zone TZ                schedule's time zone (default Etc/UTC)
  --shards N                    one scheduler job per shard, 1-64 (default 1)
  --max-delivery-attempts N     before a push goes to the dead-letter topic, 5-100 (default 5)
  --project-number N            skip looking it up (needed for the Pub/Sub service agent)
  --secops-service-account SA   grant the SecOps feed's service account Storage Object Viewer
  --key-file PATH               create a key for the writer service account in PATH (mode 600)
  --dry-run                     print every command without running it
  -h, --help                    this text
EOF
}

die() {
  echo "setup.sh: $*" >&2
  echo "run deploy/gcp/setup.sh --help for the options" >&2
  exit 2
}

PROJECT="" BUCKET="" ENDPOINT="" REGION="us-central1" PREFIX="sentry/" NAME="sentry-collector"
AUDIENCE="" SCHEDULE="*/5 * * * *" TIME_ZONE="Etc/UTC" SHARDS=1 MAX_ATTEMPTS=5
PROJECT_NUMBER="" SECOPS_SA="" KEY_FILE="" DRY_RUN=0

while [ $# -gt 0 ]; do
  flag="$1"
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --project|--bucket|--endpoint|--region|--prefix|--name|--audience|--schedule|--time-zone|\
    --shards|--max-delivery-attempts|--project-number|--secops-service-account|--key-file)
      [ $# -ge 2 ] || die "$flag needs a value"
      value="$2"; shift 2 ;;
    *) die "unknown argument: $flag" ;;
  esac
  case "$flag" in
    --project) PROJECT="$value" ;;
    --bucket) BUCKET="$value" ;;
    --endpoint) ENDPOINT="$value" ;;
    --region) REGION="$value" ;;
    --prefix) PREFIX="$value" ;;
    --name) NAME="$value" ;;
    --audience) AUDIENCE="$value" ;;
    --schedule) SCHEDULE="$value" ;;
    --time-zone) TIME_ZONE="$value" ;;
    --shards) SHARDS="$value" ;;
    --max-delivery-attempts) MAX_ATTEMPTS="$value" ;;
    --project-number) PROJECT_NUMBER="$value" ;;
    --secops-service-account) SECOPS_SA="$value" ;;
    --key-file) KEY_FILE="$value" ;;
  esac
done

# Every input is checked before anything runs, each error naming its option.
problems=()
[ -n "$PROJECT" ] || problems+=("--project is required (your Google Cloud project id)")
[ -n "$BUCKET" ] || problems+=("--bucket is required (a new bucket's name)")
[ -n "$ENDPOINT" ] || problems+=("--endpoint is required (where the component is deployed, https://...)")
if [ -n "$PROJECT" ] && ! [[ "$PROJECT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
  problems+=("--project must be a project id: 6-30 lower-case letters, digits and hyphens")
fi
if [ -n "$BUCKET" ] && ! [[ "$BUCKET" =~ ^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$ ]]; then
  problems+=("--bucket must be 3-63 lower-case letters, digits, '-' and '_', starting and ending with a letter or digit")
fi
if [ -n "$ENDPOINT" ] && ! [[ "$ENDPOINT" =~ ^https://[A-Za-z0-9.-]+(:[0-9]+)?$ ]]; then
  problems+=("--endpoint must be an https origin without a path, like https://collector.example.com (Pub/Sub pushes OIDC tokens only over https)")
fi
if ! [[ "$PREFIX" =~ ^([A-Za-z0-9._-]+/)*$ ]]; then
  problems+=("--prefix must be empty or end in / (letters, digits, '.', '_', '-'), like sentry/")
fi
if ! [[ "$NAME" =~ ^[a-z][a-z0-9-]{3,20}$ ]]; then
  problems+=("--name must be 4-21 lower-case letters, digits and hyphens, starting with a letter (service account ids are at most 30 characters)")
fi
if ! [[ "$REGION" =~ ^[a-z]+(-[a-z0-9]+)+$ ]]; then
  problems+=("--region must be a region like us-central1 or europe-west1")
fi
if ! [[ "$SHARDS" =~ ^[0-9]+$ ]] || [ "$SHARDS" -lt 1 ] || [ "$SHARDS" -gt 64 ]; then
  problems+=("--shards must be a number from 1 to 64")
fi
if ! [[ "$MAX_ATTEMPTS" =~ ^[0-9]+$ ]] || [ "$MAX_ATTEMPTS" -lt 5 ] || [ "$MAX_ATTEMPTS" -gt 100 ]; then
  problems+=("--max-delivery-attempts must be a number from 5 to 100 (Pub/Sub's range)")
fi
if [ "$(wc -w <<<"$SCHEDULE")" -ne 5 ]; then
  problems+=("--schedule must have 5 fields (minute hour day month weekday), like \"*/5 * * * *\"")
fi
if [ -n "$PROJECT_NUMBER" ] && ! [[ "$PROJECT_NUMBER" =~ ^[0-9]+$ ]]; then
  problems+=("--project-number must be digits (gcloud projects describe $PROJECT --format='value(projectNumber)')")
fi
if [ -n "$SECOPS_SA" ] && ! [[ "$SECOPS_SA" =~ ^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+$ ]]; then
  problems+=("--secops-service-account must be a service account email (the feed's \"Get a Service Account\" shows it)")
fi
if [ ${#problems[@]} -gt 0 ]; then
  printf 'setup.sh: %s\n' "${problems[@]}" >&2
  echo "run deploy/gcp/setup.sh --help for the options" >&2
  exit 2
fi

PUSH_ENDPOINT="$ENDPOINT/pubsub"
AUDIENCE="${AUDIENCE:-$PUSH_ENDPOINT}"
WRITER="$NAME-writer@$PROJECT.iam.gserviceaccount.com"
PUSHER="$NAME-push@$PROJECT.iam.gserviceaccount.com"
TOPIC="$NAME-runs"
DEAD_LETTER="$NAME-runs-dead-letter"
SUBSCRIPTION="$NAME-push"

# Prints a command the way a shell reads it back, after "+ ".
show() {
  local out="+" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "$out"
}

run() {
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

# create CHECK... -- CREATE...: runs CREATE unless CHECK (a describe) finds the resource.
create() {
  local check=()
  while [ "$1" != "--" ]; do check+=("$1"); shift; done
  shift
  if [ "$DRY_RUN" = 0 ] && "${check[@]}" >/dev/null 2>&1; then
    echo "= exists, kept: ${check[*]}"
    return
  fi
  run "$@"
}

if [ "$DRY_RUN" = 0 ]; then
  command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
else
  echo "# dry run: every command below is printed, none is run"
fi

run gcloud services enable storage.googleapis.com pubsub.googleapis.com \
  cloudscheduler.googleapis.com iam.googleapis.com --project="$PROJECT"

if [ -z "$PROJECT_NUMBER" ]; then
  show gcloud projects describe "$PROJECT" --format='value(projectNumber)'
  if [ "$DRY_RUN" = 0 ]; then
    PROJECT_NUMBER="$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')"
  else
    PROJECT_NUMBER="PROJECT_NUMBER"
  fi
fi
PUBSUB_AGENT="service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"

# The bucket: only the component writes, only SecOps reads, nobody else sees it.
create gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT" -- \
  gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT" --location="$REGION" \
  --uniform-bucket-level-access --public-access-prevention

# The writer: create objects and read them back (to confirm, after a lost reply, that an
# object is its own). No delete, so it cannot overwrite or remove what it delivered.
create gcloud iam service-accounts describe "$WRITER" --project="$PROJECT" -- \
  gcloud iam service-accounts create "$NAME-writer" --project="$PROJECT" \
  --display-name="sentry-logs-collector: writes NDJSON objects"
for role in roles/storage.objectCreator roles/storage.objectViewer; do
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="serviceAccount:$WRITER" --role="$role"
done

# The push identity: Pub/Sub signs an OIDC token as this account; the component accepts
# only this email with this audience.
create gcloud iam service-accounts describe "$PUSHER" --project="$PROJECT" -- \
  gcloud iam service-accounts create "$NAME-push" --project="$PROJECT" \
  --display-name="sentry-logs-collector: Pub/Sub push identity"
# Projects created before 2021-04-08 need this for Pub/Sub to mint the token; it is granted
# on the push account only, not on the project.
run gcloud iam service-accounts add-iam-policy-binding "$PUSHER" --project="$PROJECT" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator

create gcloud pubsub topics describe "$TOPIC" --project="$PROJECT" -- \
  gcloud pubsub topics create "$TOPIC" --project="$PROJECT"
create gcloud pubsub topics describe "$DEAD_LETTER" --project="$PROJECT" -- \
  gcloud pubsub topics create "$DEAD_LETTER" --project="$PROJECT"

# Push to /pubsub with an OIDC token. The ack deadline outlives a run (the component's
# time_budget, 25 s by default); a 503 is redelivered with backoff; after
# --max-delivery-attempts the message goes to the dead-letter topic, where a failing
# collector stays visible. Stale ticks expire after an hour instead of piling up.
create gcloud pubsub subscriptions describe "$SUBSCRIPTION" --project="$PROJECT" -- \
  gcloud pubsub subscriptions create "$SUBSCRIPTION" --project="$PROJECT" \
  --topic="$TOPIC" \
  --push-endpoint="$PUSH_ENDPOINT" \
  --push-auth-service-account="$PUSHER" \
  --push-auth-token-audience="$AUDIENCE" \
  --ack-deadline=60 \
  --min-retry-delay=10s --max-retry-delay=600s \
  --dead-letter-topic="$DEAD_LETTER" --max-delivery-attempts="$MAX_ATTEMPTS" \
  --message-retention-duration=1h \
  --expiration-period=never
# The Pub/Sub service agent forwards undeliverable messages to the dead-letter topic.
run gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER" --project="$PROJECT" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.publisher
run gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" --project="$PROJECT" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber

# One scheduler job per shard; each message names its shard in the `shard` attribute.
for ((i = 0; i < SHARDS; i++)); do
  job="$NAME-run" attrs=()
  if [ "$SHARDS" -gt 1 ]; then
    job="$NAME-run-s${i}of$SHARDS"
    attrs=(--attributes="shard=$i/$SHARDS")
  fi
  create gcloud scheduler jobs describe "$job" --project="$PROJECT" --location="$REGION" -- \
    gcloud scheduler jobs create pubsub "$job" --project="$PROJECT" --location="$REGION" \
    --schedule="$SCHEDULE" --time-zone="$TIME_ZONE" \
    --topic="projects/$PROJECT/topics/$TOPIC" --message-body='{}' "${attrs[@]}"
done

if [ -n "$SECOPS_SA" ]; then
  run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="serviceAccount:$SECOPS_SA" --role=roles/storage.objectViewer
fi

if [ -n "$KEY_FILE" ]; then
  # The key is the one secret this setup makes: created with mode 600, never printed.
  if [ "$DRY_RUN" = 0 ]; then
    [ ! -e "$KEY_FILE" ] || die "--key-file $KEY_FILE exists; choose a new path"
    (umask 077 && gcloud iam service-accounts keys create "$KEY_FILE" --iam-account="$WRITER" --project="$PROJECT")
    show gcloud iam service-accounts keys create "$KEY_FILE" --iam-account="$WRITER" --project="$PROJECT"
  else
    show gcloud iam service-accounts keys create "$KEY_FILE" --iam-account="$WRITER" --project="$PROJECT"
  fi
fi

key_arg="${KEY_FILE:-writer-key.json}"
streams_uri="gs://$BUCKET/$PREFIX"
cat <<EOF

== Deploy the component with these Spin variables (see docs/deploy.md) ==
  gcs_bucket=$BUCKET
  gcs_prefix=$PREFIX
  gcp_service_account_key=@$key_arg      (secret; a key of $WRITER)
  push_oidc_audience=$AUDIENCE
  push_oidc_emails=$PUSHER
  sentry_org=<your org slug>
  sentry_auth_token=<internal integration token>      (secret)
  sentry_webhook_secret=<the integration's client secret>   (secret; optional, see below)
EOF
if [ -z "$KEY_FILE" ]; then
  cat <<EOF
  No key was created. Create one (it is a secret: keep it out of the repository) with
    (umask 077 && gcloud iam service-accounts keys create $key_arg --iam-account=$WRITER)
EOF
fi
cat <<EOF

== SecOps feed (SIEM Settings > Feeds > Add new feed) ==
  Source type:               Google Cloud Storage V2
  Log type:                  Sentry (SENTRY)
  Storage bucket URI:        ${streams_uri}events/
  Source deletion option:    Never delete files
  Other streams, if enabled, each have their own prefix and feed: ${streams_uri}<stream>/
  The feed's service account (shown by "Get a Service Account" in the feed form) needs
  Storage Object Viewer on the bucket:
EOF
if [ -n "$SECOPS_SA" ]; then
  echo "    granted above to $SECOPS_SA"
else
  echo "    gcloud storage buckets add-iam-policy-binding gs://$BUCKET --member=serviceAccount:SECOPS_SERVICE_ACCOUNT --role=roles/storage.objectViewer"
fi
cat <<EOF

Why the bucket holds only events: the component keeps its checkpoints in Spin's key-value
store, not in the bucket. A state file in the feed's prefix (as Google's Python recipe keeps
state.json) is read by the feed as if it were log data, and needs a writer allowed to
overwrite objects; here the writer can only create, so nothing delivered can be changed.

== Sentry webhooks (optional: who resolved, assigned, archived or commented, and alerts) ==
  In Sentry: Settings > Developer Settings > Custom Integrations > Create New Integration >
  Internal Integration. Paste this Webhook URL:
    ${ENDPOINT%/}/sentry/webhook
  Permissions: Issue & Event Read (the same integration's token can be sentry_auth_token).
  Webhooks: tick issue and comment (issue_activity/), error (events/; Business plans),
  and turn on Alert Rule Action for event_alert and metric_alert (alerts/).
  Save, copy the Client Secret into sentry_webhook_secret, and redeploy.
  issue_activity/ and alerts/ are separate prefixes: give each its own feed if wanted.

Check a run: curl the component's /status with your credentials, or watch the
$SUBSCRIPTION subscription's unacked messages and the $DEAD_LETTER topic.
EOF
