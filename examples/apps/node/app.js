#!/usr/bin/env node
// A Node.js HTTP app that loses no request when `handoff run` (or systemd) replaces it: the
// recipe of docs/apps.md. Node's http module only, no package.
//
// The socket on fd 3 (LISTEN_FDS) is accepted by a net.Server whose connections are handed to
// the http.Server: closing the net.Server stops accepting and touches nothing else, whereas
// http.Server.close() closes idle keep-alive connections as well (Node 19 and later), under
// clients that may have sent their next request already. On SIGTERM: stop accepting (the
// socket stays open in the supervisor and the next generation), answer the next request of
// every connection with `Connection: close`, exit once every connection is closed, or after
// DRAIN_GRACE_MS for clients that stay silent.
//
// READY=1: Node has no unix datagram socket, so `systemd-notify --ready` (systemd's package)
// sends it from a child process, in our process group as the supervisor requires; it waits for
// the supervisor to have read the message (a barrier) before it exits.
'use strict';
const { execFile } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');

// How long a draining process waits for each keep-alive client's next request; keep it below
// the supervisor's --stop-timeout.
const DRAIN_GRACE_MS = 5000;

if (process.env.LISTEN_PID !== String(process.pid) || !(Number(process.env.LISTEN_FDS) >= 1)) {
  console.error('app.js: no socket in LISTEN_FDS');
  process.exit(1);
}

let draining = false;
const connections = new Set();

const app = http.createServer((req, res) => {
  // Node closes the connection after a response that says so.
  if (draining) res.setHeader('Connection', 'close');
  const body = `${process.pid}\n`;
  res.writeHead(200, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    'X-Served-By': String(process.pid),
  });
  res.end(body);
});

function exitIfDrained() {
  if (draining && connections.size === 0) process.exit(0);
}

const acceptor = net.createServer((socket) => {
  connections.add(socket);
  socket.on('close', () => {
    connections.delete(socket);
    exitIfDrained();
  });
  app.emit('connection', socket);
});

acceptor.listen({ fd: 3 }, () => {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile('systemd-notify', ['--ready'], (err) => {
    if (err) console.error(`app.js: systemd-notify --ready: ${err.message}`);
  });
});

function drain() {
  if (draining) return;
  draining = true;
  acceptor.close(); // our copy of the socket only
  setTimeout(() => {
    for (const socket of connections) socket.destroy();
    process.exit(0);
  }, DRAIN_GRACE_MS).unref();
  exitIfDrained();
}
process.on('SIGTERM', drain);
process.on('SIGINT', drain);
