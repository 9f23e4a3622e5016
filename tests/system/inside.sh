#!/bin/bash
# Runs inside the booted container (systemd is PID 1), from boot.sh: installs inferd from
# /var/tmp/e2e/inferd-old.$FORMAT, checks the service end to end, upgrades to inferd-new.$FORMAT,
# removes (and for the .deb purges) it. Prints "N passed, M failed"; exits 1 if any failed.
# The .rpm is installed with Debian's rpm (--nodeps): its scriptlets and paths are exercised
# under a real systemd, not an RPM distribution's dependency resolution.
set -uo pipefail
E=/var/tmp/e2e
PY=/opt/inferd/venv/bin/python
pass=0 fail=0

ok() { echo "  ok   $1"; pass=$((pass + 1)); }
bad() { echo "  FAIL $1"; fail=$((fail + 1)); }
check() {  # check "what" command...: passes if the command succeeds; shows its output if not
    local what=$1; shift
    if "$@" >/tmp/check.out 2>&1; then ok "$what"; else bad "$what"; sed 's/^/       | /' /tmp/check.out | tail -n 25; fi
}
is() { [ "$1" = "$2" ] || { echo "got '$1', want '$2'"; return 1; }; }
prop() { systemctl show -P "$2" "$1"; }
until_true() {  # until_true SECONDS command...
    local n=$(($1 * 10)); shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    "$@"
}
as_inferd() { runuser -u inferd -- "$PY" "$@"; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
journal_json() { journalctl -u inferd -o json --no-pager "$@"; }
export -f journal_json  # for the bash -c checks

# Small clients, run with the package's own interpreter (as user inferd where it matters).
cat >$E/infer.py <<'PYEOF'
# infer.py [MODEL]: add_sub-shaped request over HTTP; the answer must be INPUT0 + INPUT1.
import json, sys, urllib.request
model = sys.argv[1] if len(sys.argv) > 1 else "add_sub"
body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))} for n in ("INPUT0", "INPUT1")]}
req = urllib.request.Request(f"http://127.0.0.1:8000/v2/models/{model}/infer", json.dumps(body).encode())
out = {o["name"]: o["data"] for o in json.load(urllib.request.urlopen(req, timeout=60))["outputs"]}
assert out["OUTPUT0"] == [2 * i for i in range(16)], out
PYEOF
cat >$E/unix.py <<'PYEOF'
# unix.py: add_sub over the Unix socket with inferd.client
import numpy as np
from inferd.client import Client
a = np.arange(16, dtype=np.int32).reshape(1, 16)
with Client(socket="/run/inferd/inferd.sock") as c:
    out = c.infer("add_sub", {"INPUT0": a, "INPUT1": a})
assert (out["OUTPUT0"] == 2 * a).all(), out
PYEOF
cat >$E/get.py <<'PYEOF'
# get.py PATH [KEY]: GET over HTTP; prints the body, or one key of its JSON
import json, sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:8000" + sys.argv[1], timeout=60).read()
print(json.loads(body)[sys.argv[2]] if len(sys.argv) > 2 else body.decode())
PYEOF
cat >$E/fields.py <<'PYEOF'
# fields.py FIELD=VALUE...: reads `journalctl -o json` on stdin; passes if an entry has them all
import json, sys
want = dict(a.split("=", 1) for a in sys.argv[1:])
entries = [json.loads(line) for line in sys.stdin if line.strip()]
hits = [e for e in entries if all(e.get(k) == v for k, v in want.items())]
print(f"{len(hits)} of {len(entries)} entries have {want}")
sys.exit(0 if hits else 1)
PYEOF
chmod 0644 $E/*.py

echo "== $FORMAT: install"
t=$(now)
if [ "$FORMAT" = deb ]; then
    dpkg -i $E/inferd-old.deb >/tmp/install.log 2>&1; install_rc=$?
else
    rpm -i --nodeps $E/inferd-old.rpm >/tmp/install.log 2>&1; install_rc=$?
fi
install_s=$(since "$t")
check "install ($FORMAT) in ${install_s}s" is "$install_rc" 0
[ "$install_rc" = 0 ] || { cat /tmp/install.log; echo "$pass passed, $((fail + 1)) failed"; exit 1; }
check "user and group inferd (system, no login)" bash -c 'getent passwd inferd | grep -q ":/usr/sbin/nologin$" && getent group inferd'
check "/usr/bin/inferd runs" inferd --version
check "unit enabled by the install" is "$(systemctl is-enabled inferd.service)" enabled
check "config: root:inferd 0640" is "$(stat -c %U:%G:%a /etc/inferd/inferd.toml)" root:inferd:640
check "fleet docs and examples in /usr/share/doc/inferd" bash -c 'cd /usr/share/doc/inferd && for f in fleet.md object-storage.md fleet/haproxy.cfg fleet/nginx.conf fleet/prometheus.yml fleet/inferd-rules.yml; do test -s "$f" || { echo "missing: $f"; exit 1; }; done'
check "models dir: root:inferd 2775 (not writable by others)" is "$(stat -c %U:%G:%a /var/lib/inferd/models)" root:inferd:2775
check "state dir: inferd:inferd 0750" is "$(stat -c %U:%G:%a /var/lib/inferd)" inferd:inferd:750
check "the mirror's directory: inferd:inferd 750" is "$(stat -c %U:%G:%a /var/lib/inferd/mirror)" inferd:inferd:750
check "example models installed" test -f /var/lib/inferd/models/mlp.onnx -a -f /var/lib/inferd/models/add_sub/1/model.onnx
check "systemd-analyze verify prints nothing" bash -c \
    'out=$(systemd-analyze verify inferd.service inferd.socket inferd-http.socket inferd-grpc.socket 2>&1); echo "$out"; [ -z "$out" ]'
score=$(systemd-analyze security inferd.service 2>&1 | tail -n 1)
echo "  info systemd-analyze security: $score"

echo "== start"
t=$(now)
check "systemctl start returns (on READY=1)" systemctl start inferd
start_s=$(since "$t")
echo "  info systemctl start took ${start_s}s"
if [ "$(prop inferd ActiveState)" != active ]; then  # nothing below can pass: show why and stop
    journalctl -u inferd --no-pager | tail -n 40; echo "$pass passed, $((fail + 1)) failed"; exit 1
fi
# No waiting from here on: Type=notify means started = listening and every model loaded.
check "ready at once: /v2/health/ready answers 200" $PY $E/get.py /v2/health/ready
check "active (running)" is "$(prop inferd ActiveState)/$(prop inferd SubState)" active/running
check "STATUS= shows the model counts" is "$(prop inferd StatusText)" "models: 3 ready"
PID=$(prop inferd MainPID)
check "main process runs as inferd" is "$(ps -o user= -p "$PID")" inferd
check "WATCHDOG_USEC reaches the daemon" grep -qz '^WATCHDOG_USEC=30000000$' /proc/"$PID"/environ
check "workers do not get NOTIFY_SOCKET" bash -c "for c in \$(pgrep -P $PID); do ! grep -qz NOTIFY_SOCKET /proc/\$c/environ || exit 1; done"
check "HTTP inference as user inferd" as_inferd $E/infer.py add_sub
check "Unix socket inference as user inferd" as_inferd $E/unix.py
check "socket is srw-rw---- inferd:inferd" is "$(stat -c %A:%U:%G /run/inferd/inferd.sock)" srw-rw----:inferd:inferd
check "Unix socket refused to a user outside group inferd" bash -c "! runuser -u nobody -- $PY $E/unix.py"

echo "== journal"
check "native entries with MODEL, VERSION, PRIORITY" bash -c "journal_json MODEL=add_sub VERSION=1 | $PY $E/fields.py _TRANSPORT=journal PRIORITY=6 SYSLOG_IDENTIFIER=inferd"
check "the ready event, queryable by MESSAGE" bash -c "journal_json MESSAGE=ready _PID=$PID | $PY $E/fields.py PID=$PID"
check "journalctl -u inferd shows the events" bash -c "journalctl -u inferd --no-pager | grep -q ' inferd\[$PID\]: ready'"

echo "== reload"
sed -i 's/^\[defaults\].*/&\nmax_batch_size = 8/' /etc/inferd/inferd.toml  # an edit (kept by the upgrade below)
check "systemctl reload" systemctl reload inferd
check "reload re-read the config (mlp max_batch_size 8)" until_true 30 bash -c "[ \"\$($PY $E/get.py /v2/models/mlp/config max_batch_size)\" = 8 ]"
check "RELOADING=1 .. READY=1: logged, same process" bash -c "journal_json MESSAGE=reloaded _PID=$PID | $PY $E/fields.py && [ \$(systemctl show -P MainPID inferd) = $PID ]"
check "active after reload" until_true 10 bash -c '[ "$(systemctl show -P ActiveState inferd)" = active ]'

echo "== watchdog"
mkdir -p /run/systemd/system/inferd.service.d
# The test launcher (tests/hang_on_sigusr2.py: inferd with SIGUSR2 blocking its loop) goes where
# the service can read it (its /tmp and /var/tmp are private).
install -D -m 0644 $E/hang_on_sigusr2.py /usr/local/lib/inferd-test/hang_on_sigusr2.py
cat >/run/systemd/system/inferd.service.d/zz-test.conf <<'EOF'
[Service]
WatchdogSec=3s
ExecStart=
ExecStart=/opt/inferd/venv/bin/python /usr/local/lib/inferd-test/hang_on_sigusr2.py serve --config /etc/inferd/inferd.toml
LimitCORE=0
EOF
systemctl daemon-reload && systemctl restart inferd
PID=$(prop inferd MainPID); N0=$(prop inferd NRestarts)
sleep 4.5
check "alive past WatchdogSec (keep-alives arrive)" bash -c "[ \$(systemctl show -P MainPID inferd) = $PID ] && [ \$(systemctl show -P NRestarts inferd) = $N0 ]"
kill -USR2 "$PID"  # the test launcher's: blocks the event loop, the process stays
check "blocked loop: watchdog kills it, systemd restarts it" until_true 30 bash -c \
    "[ \$(systemctl show -P NRestarts inferd) = $((N0 + 1)) ] && [ \$(systemctl show -P ActiveState inferd) = active ] && [ \$(systemctl show -P MainPID inferd) != $PID ]"
check "journal: Watchdog timeout" bash -c "journalctl -u inferd --no-pager | grep -q 'Watchdog timeout'"
check "serves again after the restart" as_inferd $E/infer.py add_sub
rm -rf /run/systemd/system/inferd.service.d /usr/local/lib/inferd-test && systemctl daemon-reload

echo "== stop drains"
mkdir -p /var/lib/inferd/models/held/1
cp /var/lib/inferd/models/add_sub/1/model.onnx /var/lib/inferd/models/held/1/model.onnx.part
printf 'max_batch_size = 8\nmax_queue_delay_ms = 3000\n' >/var/lib/inferd/models/held/config.toml
mv /var/lib/inferd/models/held/1/model.onnx.part /var/lib/inferd/models/held/1/model.onnx
systemctl restart inferd
PID=$(prop inferd MainPID)
check "a model dropped in is served (held)" until_true 30 $PY $E/get.py /v2/models/held/ready
as_inferd $E/infer.py held >/tmp/held.out 2>&1 &
HELD=$!
check "request queued (3 s batching delay)" until_true 10 bash -c "$PY $E/get.py /metrics | grep -q 'inferd_queue_rows{model=\"held\",version=\"1\"} 1.0'"
t=$(now)
check "systemctl stop" systemctl stop inferd
echo "  info systemctl stop took $(since "$t")s"
check "stop: Result=success, inactive" is "$(prop inferd Result)/$(prop inferd ActiveState)" success/inactive
check "the in-flight request was answered" wait $HELD
# The unit's default server.drain_delay_s (5 s): not ready with the request in flight, served on
# through the delay (it is answered then), drained.
check "journal: not ready with INFLIGHT=1, DRAIN_DELAY_S=5.0, stopped with DRAINED=true" bash -c \
    "journal_json _PID=$PID | $PY $E/fields.py 'MESSAGE=not ready: draining after the delay' INFLIGHT=1 DRAIN_DELAY_S=5.0 && journal_json _PID=$PID | $PY $E/fields.py MESSAGE=stopped DRAINED=true"
check "no inferd process left" bash -c '! pgrep -u inferd'

echo "== socket activation"
systemctl start inferd.socket inferd-http.socket
check "sockets listening, service not started" is "$(prop inferd.socket ActiveState)/$(prop inferd-http.socket ActiveState)/$(prop inferd ActiveState)" active/active/inactive
check "the first HTTP connection starts it and is answered" $PY $E/get.py /v2/health/live
PID=$(prop inferd MainPID)
check "it serves on the sockets handed over (ACTIVATED=true)" bash -c \
    "journal_json _PID=$PID MESSAGE=listening | $PY $E/fields.py FRONTEND=http ACTIVATED=true && journal_json _PID=$PID MESSAGE=listening | $PY $E/fields.py FRONTEND=socket ACTIVATED=true"
check "Unix socket inference as user inferd (activated)" until_true 30 as_inferd $E/unix.py
systemctl stop inferd.socket inferd-http.socket inferd
check "everything stopped" is "$(prop inferd.socket ActiveState)/$(prop inferd ActiveState)" inactive/inactive

echo "== upgrade"
systemctl start inferd
PID=$(prop inferd MainPID)
t=$(now)
if [ "$FORMAT" = deb ]; then
    check "dpkg -i newer" dpkg -i $E/inferd-new.deb
    check "version is the newer one" bash -c "dpkg-query -W -f '\${Version}' inferd | grep -q -- '-2$'"
else
    check "rpm -U newer" rpm -U --nodeps $E/inferd-new.rpm
    check "version is the newer one" bash -c "rpm -q inferd | grep -q -- '-2\.x86_64$'"
fi
echo "  info upgrade took $(since "$t")s"
check "restarted on the new build" bash -c "[ \$(systemctl show -P MainPID inferd) != $PID ] && [ \$(systemctl show -P ActiveState inferd) = active ]"
check "edited config kept" grep -q '^max_batch_size = 8$' /etc/inferd/inferd.toml
check "edited config in force (mlp max_batch_size 8)" is "$($PY $E/get.py /v2/models/mlp/config max_batch_size)" 8
check "still enabled" is "$(systemctl is-enabled inferd.service)" enabled
check "the dropped-in model survived" test -f /var/lib/inferd/models/held/1/model.onnx

echo "== removal"
if [ "$FORMAT" = deb ]; then
    check "dpkg -r" dpkg -r inferd
else
    check "rpm -e" rpm -e inferd
fi
check "service stopped and gone" is "$(prop inferd LoadState)/$(prop inferd ActiveState)" not-found/inactive
check "no inferd process left" bash -c '! pgrep -u inferd'
check "/opt/inferd and /usr/bin/inferd gone" bash -c '[ ! -e /opt/inferd ] && [ ! -e /usr/bin/inferd ]'
check "models kept on removal" test -f /var/lib/inferd/models/held/1/model.onnx
if [ "$FORMAT" = deb ]; then
    check "config kept on removal" test -f /etc/inferd/inferd.toml
    check "dpkg -P (purge)" dpkg -P inferd
    check "purge removed config and state" bash -c '[ ! -e /etc/inferd ] && [ ! -e /var/lib/inferd ]'
else
    check "edited config saved as .rpmsave" grep -q '^max_batch_size = 8$' /etc/inferd/inferd.toml.rpmsave
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
