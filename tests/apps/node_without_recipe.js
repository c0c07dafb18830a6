#!/usr/bin/env node
// The Node.js app of examples/apps/node without its drain, for the comparison in docs/apps.md:
// the http.Server listens on fd 3 itself and stops the usual way on SIGTERM, server.close()
// (which, since Node 19, also closes the idle keep-alive connections), exiting once it is done.
'use strict';
const http = require('node:http');

const server = http.createServer((req, res) => {
  const body = `${process.pid}\n`;
  res.writeHead(200, { 'Content-Length': Buffer.byteLength(body), 'X-Served-By': String(process.pid) });
  res.end(body);
});
server.listen({ fd: 3 }, () => {
  if (process.env.NOTIFY_SOCKET) require('node:child_process').execFile('systemd-notify', ['--ready']);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
