#!/usr/bin/env bash
# Start, stop and health-check the local services livemigrate runs against:
#   - moto's server (DynamoDB, DynamoDB Streams, SSM) on 127.0.0.1:$LIVEMIGRATE_MOTO_PORT, plus one
#     more per extra port in $LIVEMIGRATE_MOTO_EXTRA_PORTS (the test suite gives each of its
#     parallel workers a moto of its own: one emulator process is single-threaded in effect)
#   - a real Elasticsearch node on 127.0.0.1:$LIVEMIGRATE_ES_PORT
#   - a real OpenSearch node on 127.0.0.1:$LIVEMIGRATE_OS_PORT (when asked)
# Both search nodes are integ-test-zip distributions fetched by Maven by their coordinates, so
# the repository is whatever the machine's Maven is configured for (no URL here).
# Usage: infra/services.sh up|down|status [moto|es|os|all]
#   `all` (the default) is moto plus the search engines named by SEARCH: elasticsearch
#   (default), opensearch or both.
# Idempotent: `up` leaves a healthy running service alone. Logs: $LIVEMIGRATE_SERVICES_DIR/logs/.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
MOTO_PORT=${LIVEMIGRATE_MOTO_PORT:-4599}
MOTO_EXTRA_PORTS=${LIVEMIGRATE_MOTO_EXTRA_PORTS:-}
ES_PORT=${LIVEMIGRATE_ES_PORT:-9299}
ES_VERSION=${LIVEMIGRATE_ES_VERSION:-8.19.21}
ES_HEAP=${LIVEMIGRATE_ES_HEAP:-512m}
ES_USER=${LIVEMIGRATE_ES_USER:-livemigrate-es}
OS_PORT=${LIVEMIGRATE_OS_PORT:-9399}
OS_VERSION=${LIVEMIGRATE_OS_VERSION:-2.19.6}
OS_HEAP=${LIVEMIGRATE_OS_HEAP:-512m}
SEARCH=${SEARCH:-elasticsearch}
# Pinned so that a fetch is the same on every machine; -C makes a checksum mismatch fatal.
MVN_COPY=org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy
VENV=${VENV:-$here/.venv}
STATE=${LIVEMIGRATE_SERVICES_DIR:-$here/.services}
LOGS=$STATE/logs
RUN=$STATE/run
# Elasticsearch refuses to run as root, so as root its files live where its own user can reach
# them (a checkout under /root is not traversable by other users).
if [ "$(id -u)" = 0 ]; then
  CACHE=${LIVEMIGRATE_CACHE_DIR:-/var/cache/livemigrate}
else
  CACHE=${LIVEMIGRATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/livemigrate}
fi
ES_HOME=$CACHE/elasticsearch-$ES_VERSION
ES_STATE=$CACHE/es-node-$ES_PORT
OS_HOME=$CACHE/opensearch-$OS_VERSION
OS_STATE=$CACHE/os-node-$OS_PORT

mkdir -p "$LOGS" "$RUN"
say() { echo "services: $*" >&2; }

wait_for() { # name url seconds
  local name=$1 url=$2 limit=$3 i
  for ((i = 0; i < limit * 2; i++)); do
    if curl -fsS -m 2 "$url" >/dev/null 2>&1; then say "$name is up at $url"; return 0; fi
    sleep 0.5
  done
  say "ERROR: $name did not answer at $url within ${limit}s; see its log in $LOGS"
  tail -n 30 "$LOGS/$name.log" >&2 || true
  return 1
}

pid_alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

moto_name() { # port -> the name of its pid and log files
  if [ "$1" = "$MOTO_PORT" ]; then echo moto; else echo "moto-$1"; fi
}

moto_up_one() { # port
  local port=$1 name
  name=$(moto_name "$port")
  if curl -fsS -m 2 "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
    say "moto is already up on port $port"; return 0
  fi
  [ -x "$VENV/bin/moto_server" ] || { say "ERROR: moto_server missing in $VENV; run 'make install'"; return 1; }
  # moto's server with its cancelled-transaction bug fixed (see infra/moto_server.py).
  nohup "$VENV/bin/python" "$here/infra/moto_server.py" -H 127.0.0.1 -p "$port" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  wait_for "$name" "http://127.0.0.1:$port/moto-api/" 30
}

moto_up() {
  local port
  for port in $MOTO_PORT $MOTO_EXTRA_PORTS; do moto_up_one "$port"; done
}

moto_down() {
  local f
  for f in "$RUN"/moto-*.pid; do
    if [ -e "$f" ]; then stop "$(basename "$f" .pid)"; fi
  done
  stop moto
}

maven_fetch() { # groupId:artifactId:version:zip destination-zip
  local coords=$1 zip=$2 dir
  [ -s "$zip" ] && return 0
  command -v mvn >/dev/null || { say "ERROR: Maven (mvn) is needed to fetch $coords; install it (e.g. apt-get install maven)"; return 1; }
  say "fetching $coords with Maven"
  dir=$(mktemp -d "$CACHE/fetch.XXXXXX")
  if ! mvn -B -q -C "$MVN_COPY" -Dartifact="$coords" -DoutputDirectory="$dir" >"$LOGS/maven.log" 2>&1; then
    say "ERROR: Maven could not fetch $coords; see $LOGS/maven.log"; tail -n 20 "$LOGS/maven.log" >&2
    rm -rf "$dir"; return 1
  fi
  mv "$dir"/*.zip "$zip" && rm -rf "$dir"
}

unpack() { # zip home top-level-folder
  local zip=$1 home=$2 top=$3
  [ -d "$home/bin" ] && return 0
  rm -rf "$home.tmp" && mkdir -p "$home.tmp"
  (cd "$home.tmp" && python3 -m zipfile -e "$zip" .)
  mv "$home.tmp/$top" "$home" && rm -rf "$home.tmp"
  chmod +x "$home"/bin/*
}

es_fetch() {
  [ -x "$ES_HOME/bin/elasticsearch" ] && return 0
  mkdir -p "$CACHE"
  local zip=$CACHE/elasticsearch-$ES_VERSION.zip
  maven_fetch "org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" "$zip"
  unpack "$zip" "$ES_HOME" "elasticsearch-$ES_VERSION"
}

os_fetch() {
  [ -x "$OS_HOME/bin/opensearch" ] && return 0
  mkdir -p "$CACHE"
  local zip=$CACHE/opensearch-$OS_VERSION.zip
  maven_fetch "org.opensearch.distribution.integ-test-zip:opensearch:$OS_VERSION:zip" "$zip"
  unpack "$zip" "$OS_HOME" "opensearch-$OS_VERSION"
}

java17_home() {
  for d in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64 /usr/lib/jvm/temurin-17-jdk-amd64; do
    [ -x "$d/bin/java" ] && { echo "$d"; return; }; done
  dirname "$(dirname "$(readlink -f "$(command -v java)")")"
}

es_java_home() {
  # 8.x runs on Java 17; 9.x needs 21+ (a Temurin 25 JDK is installed beside the default one).
  if [ -n "${ES_JAVA_HOME:-}" ]; then echo "$ES_JAVA_HOME"; return; fi
  case "$ES_VERSION" in
    8.*) java17_home; return ;;
    *) for d in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-21-jdk-amd64; do
         [ -x "$d/bin/java" ] && { echo "$d"; return; }; done ;;
  esac
  dirname "$(dirname "$(readlink -f "$(command -v java)")")"
}

es_up() {
  if curl -fsS -m 2 "http://127.0.0.1:$ES_PORT/_cluster/health" >/dev/null 2>&1; then
    say "elasticsearch is already up on port $ES_PORT"; return 0
  fi
  command -v java >/dev/null || [ -n "${ES_JAVA_HOME:-}" ] || { say "ERROR: elasticsearch needs Java 17+ (none found)"; return 1; }
  es_fetch
  mkdir -p "$ES_STATE/data" "$ES_STATE/logs" "$ES_STATE/tmp"
  local run=()
  read -r -a run < <(as_search_user "$ES_HOME" "$ES_STATE") || true
  local java_home
  java_home=$(es_java_home)
  nohup env ES_JAVA_HOME="$java_home" ES_TMPDIR="$ES_STATE/tmp" \
    ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP" \
    "${run[@]}" "$ES_HOME/bin/elasticsearch" \
    -E discovery.type=single-node -E xpack.security.enabled=false \
    -E network.host=127.0.0.1 -E http.port="$ES_PORT" -E transport.port=0 \
    -E path.data="$ES_STATE/data" -E path.logs="$ES_STATE/logs" \
    -E cluster.name=livemigrate-local -E cluster.routing.allocation.disk.threshold_enabled=false \
    -E action.destructive_requires_name=false \
    >"$LOGS/es.log" 2>&1 &
  echo $! >"$RUN/es.pid"
  wait_for es "http://127.0.0.1:$ES_PORT/_cluster/health?wait_for_status=yellow&timeout=1s" 180
}

as_search_user() { # home state: prints the command prefix that runs a node as its own user
  # Elasticsearch and OpenSearch refuse to run as root.
  if [ "$(id -u)" = 0 ]; then
    id "$ES_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER"
    chown -R "$ES_USER" "$1" "$2"
    echo runuser -u "$ES_USER" --
  fi
}

os_up() {
  if curl -fsS -m 2 "http://127.0.0.1:$OS_PORT/_cluster/health" >/dev/null 2>&1; then
    say "opensearch is already up on port $OS_PORT"; return 0
  fi
  command -v java >/dev/null || [ -n "${OPENSEARCH_JAVA_HOME:-}" ] || { say "ERROR: opensearch needs Java 17+ (none found)"; return 1; }
  os_fetch
  mkdir -p "$OS_STATE/data" "$OS_STATE/logs" "$OS_STATE/tmp"
  local run=()
  read -r -a run < <(as_search_user "$OS_HOME" "$OS_STATE") || true
  # 2.x runs on Java 17 (3.x would need 21+); the integ-test-zip has no security plugin.
  nohup env OPENSEARCH_JAVA_HOME="${OPENSEARCH_JAVA_HOME:-$(java17_home)}" \
    OPENSEARCH_TMPDIR="$OS_STATE/tmp" OPENSEARCH_JAVA_OPTS="-Xms$OS_HEAP -Xmx$OS_HEAP" \
    "${run[@]}" "$OS_HOME/bin/opensearch" \
    -E discovery.type=single-node \
    -E network.host=127.0.0.1 -E http.port="$OS_PORT" -E transport.port=0 \
    -E path.data="$OS_STATE/data" -E path.logs="$OS_STATE/logs" \
    -E cluster.name=livemigrate-local-os -E cluster.routing.allocation.disk.threshold_enabled=false \
    -E action.destructive_requires_name=false \
    >"$LOGS/os.log" 2>&1 &
  echo $! >"$RUN/os.pid"
  wait_for os "http://127.0.0.1:$OS_PORT/_cluster/health?wait_for_status=yellow&timeout=1s" 180
}

stop() { # name
  local name=$1
  if pid_alive "$name"; then
    local pid; pid=$(cat "$RUN/$name.pid")
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    say "$name stopped"
  else
    say "$name is not running (from this checkout)"
  fi
  rm -f "$RUN/$name.pid"
}

status() {
  local rc=0
  if curl -fsS -m 2 "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; then echo "moto: up (http://127.0.0.1:$MOTO_PORT)"; else echo "moto: down"; rc=1; fi
  if curl -fsS -m 2 "http://127.0.0.1:$ES_PORT/_cluster/health" >/dev/null 2>&1; then echo "elasticsearch: up (http://127.0.0.1:$ES_PORT)"; else echo "elasticsearch: down"; rc=1; fi
  if curl -fsS -m 2 "http://127.0.0.1:$OS_PORT/_cluster/health" >/dev/null 2>&1; then echo "opensearch: up (http://127.0.0.1:$OS_PORT)";
  else echo "opensearch: down"; case "$SEARCH" in opensearch|both) rc=1 ;; esac; fi
  return $rc
}

wanted() { # es|os: whether `all` includes this search engine
  case "$SEARCH:$1" in
    elasticsearch:es | opensearch:os | both:es | both:os) return 0 ;;
    elasticsearch:* | opensearch:* | both:*) return 1 ;;
    *) say "ERROR: SEARCH=$SEARCH: use elasticsearch, opensearch or both"; exit 2 ;;
  esac
}

cmd=${1:-status}
which=${2:-all}
case "$which" in moto | es | os | all) ;; *) echo "usage: $0 up|down|status [moto|es|os|all]" >&2; exit 2 ;; esac
case "$cmd" in
  up)
    if [ "$which" = all ] || [ "$which" = moto ]; then moto_up; fi
    if { [ "$which" = all ] && wanted es; } || [ "$which" = es ]; then es_up; fi
    if { [ "$which" = all ] && wanted os; } || [ "$which" = os ]; then os_up; fi ;;
  down)
    # `down` stops whatever this checkout started, whichever engines were asked for.
    if [ "$which" = all ] || [ "$which" = os ]; then stop os; fi
    if [ "$which" = all ] || [ "$which" = es ]; then stop es; fi
    if [ "$which" = all ] || [ "$which" = moto ]; then moto_down; fi ;;
  status) status ;;
  *) echo "usage: $0 up|down|status [moto|es|os|all]" >&2; exit 2 ;;
esac
