// The current @openmeter/sdk against two sidecars on one ledger: events.ingest through the
// first, then entitlementsV1.value from the first (at once: read-your-writes) and from the
// second, polled every 10 ms until it shows the usage or LIMIT_MS pass.
// Usage: node ingest_two_sidecars.mjs FIRST_URL SECOND_URL SUBJECT FEATURE EVENT_ID TOKENS LIMIT_MS
import { OpenMeter } from '@openmeter/sdk';

const [firstUrl, secondUrl, subject, feature, eventId, tokens, limitMs] = process.argv.slice(2);
const first = new OpenMeter({ baseUrl: firstUrl });
const second = new OpenMeter({ baseUrl: secondUrl });

const secondBefore = await second.entitlementsV1.value(subject, feature);
await first.events.ingest({
  id: eventId,
  source: 'contract-tests/two-sidecars',
  type: 'prompt',
  subject,
  data: { tokens: Number(tokens), model: 'gpt-4' },
});
const ingestedAt = performance.now();
const firstAfter = await first.entitlementsV1.value(subject, feature);
let secondAfter = null;
let secondSawItAfterMs = null;
while (performance.now() - ingestedAt < Number(limitMs)) {
  secondAfter = await second.entitlementsV1.value(subject, feature);
  if (secondAfter.usage === secondBefore.usage + Number(tokens)) {
    secondSawItAfterMs = performance.now() - ingestedAt;
    break;
  }
  await new Promise((resolve) => setTimeout(resolve, 10));
}
console.log(JSON.stringify({ secondBefore, firstAfter, secondAfter, secondSawItAfterMs }));
