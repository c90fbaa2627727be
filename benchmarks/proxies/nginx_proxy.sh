#!/usr/bin/env bash
# Reference proxy: nginx, 1 worker, upstream keep-alive pool, HTTP/1.1 to the upstream.
# Copied from the shared reference harness (bench/proxies/nginx_proxy.sh).
# usage: nginx_proxy.sh LISTEN_PORT UPSTREAM_HOST:PORT RUNDIR     (foreground; SIGTERM stops it)
set -euo pipefail
port=${1:?port}; upstream=${2:?host:port}; run=${3:?rundir}
mkdir -p "$run"; run="$(cd "$run" && pwd)"  # nginx -p needs an absolute prefix
dir="$run/nginx-proxy-$port"
mkdir -p "$dir/logs" "$dir/tmp"
cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream backend {
    server $upstream;
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # default proxy_buffers; never spill bodies to temp files on disk
      proxy_max_temp_file_size 0;
    }
  }
}
CONF
exec nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
