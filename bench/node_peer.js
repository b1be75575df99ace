// The Node peer for bench/send_bench.py: web-push 3.6.7 sending one payload to every
// subscription in a JSON file, CONCURRENCY requests in flight over one keep-alive agent,
// as a Node campaign script would. TLS is verified: the sink's self-signed certificate
// comes in through NODE_EXTRA_CA_CERTS. Prints one JSON line: sent, failed, seconds.
//
//   node bench/node_peer.js job.json [concurrency]
'use strict';

const fs = require('fs');
const https = require('https');
const webpush = require('web-push');

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const concurrency = Number(process.argv[3] || 64);
const agent = new https.Agent({ keepAlive: true, maxSockets: concurrency });
const options = {
  vapidDetails: job.vapid,
  TTL: job.ttl,
  topic: job.topic,
  agent,
  timeout: 10000,
};

let next = 0;
let sent = 0;
let failed = 0;
let firstError = null;

async function worker() {
  while (next < job.subscriptions.length) {
    const sub = job.subscriptions[next++];
    try {
      await webpush.sendNotification(sub, job.payload, options);
      sent += 1;
    } catch (err) {
      failed += 1;
      if (firstError === null) firstError = String(err.statusCode || err.message || err);
    }
  }
}

const started = process.hrtime.bigint();
Promise.all(Array.from({ length: concurrency }, worker)).then(() => {
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  agent.destroy();
  process.stdout.write(JSON.stringify({ sent, failed, seconds, first_error: firstError }) + '\n');
});
