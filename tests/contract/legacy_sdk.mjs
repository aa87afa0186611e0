// The seed's calls with @openmeter/sdk 1.0.0-beta.185 (the legacy Node SDK), against a sidecar.
// Usage: node legacy_sdk.mjs BASE_URL SUBJECT FEATURE EVENT_ID TOKENS
// Prints one JSON object: the value before, the value after ingesting one event with
// events.ingest (a single event: application/cloudevents+json, no time: the sidecar stamps it),
// and the status of a value read for an unknown subject.
import { OpenMeter } from 'openmeter-sdk-legacy';

const [baseUrl, subject, feature, eventId, tokens] = process.argv.slice(2);
const openmeter = new OpenMeter({ baseUrl });

const before = await openmeter.subjects.getEntitlementValue(subject, feature);
await openmeter.events.ingest({
  id: eventId,
  source: 'contract-tests/legacy-sdk',
  type: 'prompt',
  subject,
  data: { tokens: Number(tokens), model: 'gpt-4' },
});
const after = await openmeter.subjects.getEntitlementValue(subject, feature);
let unknown = null;
try {
  await openmeter.subjects.getEntitlementValue('nobody-at-all', feature);
} catch (error) {
  unknown = { statusCode: error.statusCode ?? null, title: error.problem?.title ?? null };
}
console.log(JSON.stringify({ before, after, unknown }));
