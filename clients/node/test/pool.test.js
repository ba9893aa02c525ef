'use strict';
// A pool study from Node against a real `promptbo serve`: upload, ask/tell with zopo, warm start.

const assert = require('node:assert/strict');
const { after, before, describe, test } = require('node:test');

const promptbo = require('../src');
const { PromptboServer } = require('./support/server');

function pool(n, dim) {
  // Deterministic embeddings: point i on a slowly turning curve, so neighbours are similar.
  const texts = [];
  const embeddings = [];
  for (let i = 0; i < n; i += 1) {
    texts.push(`Instruction ${i}: say whether the review is positive — ünï`);
    embeddings.push(Array.from({ length: dim }, (_, d) => Math.sin(0.3 * i * (d + 1)) + 0.01 * d));
  }
  return { texts, embeddings };
}

describe('pool studies against a promptbo server', { timeout: 180000 }, () => {
  let server;
  let client;

  before(async () => {
    server = await PromptboServer.start();
    client = new promptbo.PromptboClient(server.address, { timeoutMs: 30000 });
  });

  after(async () => {
    if (client) client.close();
    if (server) await server.stop();
  });

  test('uploadPool is content-hashed and a zopo study hands out distinct members', async () => {
    const { texts, embeddings } = pool(30, 6);
    const id = await client.uploadPool(texts, embeddings, { embeddingModel: 'node-test', chunkBytes: 300 });
    assert.match(id, /^[0-9a-f]{64}$/);
    assert.equal(await client.uploadPool(texts, embeddings, { embeddingModel: 'node-test' }), id);
    assert.notEqual(await client.uploadPool(texts, embeddings), id);

    const { study } = await client.createStudy('pool', {
      pool: { poolId: id }, strategy: 'zopo', strategyOptions: { num_initial: '3' }, maxTrials: 10,
    });
    assert.equal(study.spec.space, 'pool');
    assert.equal(study.spec.pool.poolId, id);
    const seen = [];
    for (;;) {
      const { trials, studyDone } = await client.suggestTrials('pool', 2);
      if (studyDone || trials.length === 0) break;
      for (const t of trials) {
        assert.equal(t.prompt.text, texts[t.prompt.poolIndex]);
        seen.push(t.prompt.poolIndex);
        await client.completeTrial('pool', t.id, -Math.abs(t.prompt.poolIndex - 17));
      }
    }
    assert.equal(seen.length, 10, JSON.stringify(seen));
    assert.equal(new Set(seen).size, 10, JSON.stringify(seen));
    const best = await client.getBestTrial('pool');
    assert.ok(seen.includes(best.prompt.poolIndex));

    const added = await client.addTrials('pool', [{ prompt: { poolIndex: 0 }, value: 5 }]);
    assert.equal(added[0].prompt.poolIndex, 0);
    assert.equal(added[0].prompt.text, texts[0]);
  });

  test('bad pools and pool prompts are refused precisely', async () => {
    await assert.rejects(
      client.createStudy('missing', { pool: { poolId: '0'.repeat(64) } }),
      promptbo.NotFoundError,
    );
    await assert.rejects(
      client.uploadPool(['same', 'same'], [[0, 1], [1, 0]]),
      /distinct/,
    );
    const { texts, embeddings } = pool(5, 3);
    const id = await client.uploadPool(texts, embeddings);
    await client.createStudy('small', { pool: { poolId: id }, strategy: 'random' });
    await assert.rejects(
      client.addTrials('small', [{ prompt: { poolIndex: 5 }, value: 1 }]),
      promptbo.InvalidArgumentError,
    );
  });
});
