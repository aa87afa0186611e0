// The current @openmeter/sdk (1.0.0-beta.232) against a sidecar: entitlementsV1.value, then
// events.ingest (always a batch, application/cloudevents-batch+json, time = new Date()), then
// value again; the same event ingested twice must count once.
// Usage: node current_sdk.mjs BASE_URL SUBJECT FEATURE EVENT_ID TOKENS
import { OpenMeter } from '@openmeter/sdk';

const [baseUrl, subject, feature, eventId, tokens] = process.argv.slice(2);
const openmeter = new OpenMeter({ baseUrl });

const event = {
  id: eventId,
  source: 'contract-tests/current-sdk',
  type: 'prompt',
  subject,
  data: { tokens: Number(tokens), model: 'gpt-4' },
};
const before = await openmeter.entitlementsV1.value(subject, feature);
await openmeter.events.ingest(event);
const after = await openmeter.entitlementsV1.value(subject, feature);
await openmeter.events.ingest([event, { ...event, id: `${eventId}-gpt-3.5`, data: { tokens: 7, model: 'gpt-3.5-turbo' } }]);
const again = await openmeter.entitlementsV1.value(subject, feature);
console.log(JSON.stringify({ before, after, again }));
