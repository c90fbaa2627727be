#!/usr/bin/env bash
# Fast, cheap upstream for benchmarks: one nginx worker on 127.0.0.1:PORT serving
#   /ok   -> 200 "ok" (2-byte body, `return`)
#   /1k   -> 1024-byte static file
#   /64k  -> 65536-byte static file
# Copied from the shared reference harness (bench/upstream_nginx.sh).
# usage: upstream_nginx.sh PORT RUNDIR      (runs in the foreground; stop it with SIGTERM)
set -euo pipefail
port=${1:?port}; run=${2:?rundir}
mkdir -p "$run"; run="$(cd "$run" && pwd)"  # nginx -p needs an absolute prefix
dir="$run/upstream-$port"
mkdir -p "$dir/www" "$dir/logs" "$dir/tmp"
head -c 1024  /dev/zero | tr '\0' 'a' >"$dir/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' >"$dir/www/64k"
cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
  default_type application/octet-stream;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$port backlog=4096 reuseport;
    root $dir/www;
    location = /ok { default_type text/plain; return 200 "ok"; }
    location / { }
  }
}
CONF
exec nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
