// stripe-node's own verify+parse, timed in-process: `stripe.webhooks.constructEvent` on the raw
// body bytes, as an Express `express.raw()` handler receives them.
// Usage: node node_peer.js BODY_FILE HEADER SECRET TOLERANCE ITERATIONS ROUNDS
'use strict';
const fs = require('fs');
const Stripe = require('stripe');

const [bodyFile, header, secret, toleranceText, iterationsText, roundsText] = process.argv.slice(2);
const body = fs.readFileSync(bodyFile);
const tolerance = Number(toleranceText);
const iterations = Number(iterationsText);
const rounds = Number(roundsText);
// constructEvent makes no request; the key only satisfies the constructor.
const stripe = new Stripe('sk_test_bench_peers_not_a_real_key');

const event = stripe.webhooks.constructEvent(body, header, secret, tolerance);
if (event.id !== 'evt_1QcXic3ZRdECX8ViXm5ez2uC' || event.type !== 'account.updated') {
  throw new Error(`unexpected event ${event.id} ${event.type}`);
}

function round() {
  let kept = 0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    kept += stripe.webhooks.constructEvent(body, header, secret, tolerance).created & 1;
  }
  const elapsed = process.hrtime.bigint() - start;
  if (kept !== 0) throw new Error('the event changed under the loop');
  return Number(elapsed) / 1000 / iterations;
}

round(); // warm-up: lets the JIT compile the loop before it is measured
const perRound = [];
for (let r = 0; r < rounds; r++) perRound.push(round());
const sorted = [...perRound].sort((a, b) => a - b);
// stripe's package exports hide package.json from require(): read it from the installed tree.
const version = JSON.parse(
  fs.readFileSync(require('path').join(process.env.NODE_PATH, 'stripe', 'package.json'), 'utf8'),
).version;
console.log(JSON.stringify({
  peer: `stripe-node ${version} (node ${process.versions.node})`,
  call: 'stripe.webhooks.constructEvent',
  iterations,
  median_us: sorted[Math.floor(sorted.length / 2)],
  rounds_us: perRound,
}));
