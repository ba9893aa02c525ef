'use strict';
// End-to-end tests of the Node client against a real `promptbo serve` (SQLite, free port).

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { after, before, describe, test } = require('node:test');
const { promisify } = require('node:util');

const promptbo = require('../src');
const { score } = require('../examples/ask_tell');
const { PromptboServer } = require('./support/server');

const EXAMPLE = path.join(__dirname, '..', 'examples', 'ask_tell.js');
const softSpec = (maxTrials) => ({
  soft: { promptLength: 2, embeddingDim: 4, intrinsicDim: 3 },
  strategy: 'random',
  maxTrials,
  seed: 3,
});

describe('against a promptbo server', { timeout: 180000 }, () => {
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

  test('tellAndAsk reports a result and hands out the next trial in one call', async () => {
    await client.createStudy('chained', softSpec(3));
    let { trials } = await client.suggestTrials('chained', 1);
    const told = [];
    while (trials.length) {
      const reply = await client.tellAndAsk('chained', trials[0].id, told.length, {}, { count: 1 });
      assert.equal(reply.trial.state, 'TRIAL_STATE_COMPLETED');
      told.push(reply.trial.id);
      trials = reply.nextTrials;
      assert.equal(reply.studyDone, told.length === 3);
    }
    assert.equal(new Set(told).size, 3);
    const study = await client.getStudy('chained');
    assert.equal(study.state, 'STUDY_STATE_COMPLETED');
    assert.equal(study.completedCount, 3);
  });

  test('tellMany records a batch all or nothing and hands out the next', async () => {
    await client.createStudy('batched', softSpec(4));
    const { trials } = await client.suggestTrials('batched', 2);
    const ids = trials.map((t) => t.id);
    await assert.rejects(
      client.tellMany('batched', [{ trialId: ids[0], value: 1 }, { trialId: ids[1], value: NaN }]),
      promptbo.InvalidArgumentError,
    );
    assert.equal((await client.listTrials('batched', { state: 'completed' })).length, 0);
    const reply = await client.tellMany(
      'batched',
      [{ trialId: ids[0], value: 1 }, { trialId: ids[1], value: 2, metrics: { acc: 0.5 } }],
      { count: 5 },
    );
    assert.deepEqual(reply.trials.map((t) => t.id), ids);
    assert.equal(reply.trials[1].metrics.acc, 0.5);
    assert.equal(reply.nextTrials.length, 2); // the budget of 4 leaves two
    assert.equal(reply.studyDone, false);
  });

  test('the ask/tell example stores and completes every trial', { timeout: 120000 }, async () => {
    const maxTrials = 8;
    const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE], {
      env: {
        ...process.env,
        PROMPTBO_ADDRESS: server.address,
        PROMPTBO_STUDY: 'example',
        PROMPTBO_MAX_TRIALS: String(maxTrials),
        PROMPTBO_BATCH: '3',
      },
      timeout: 90000,
    });
    assert.match(stdout, /created study example/);
    assert.match(stdout, /best trial \d+: value=/);

    const trials = await client.listTrials('example');
    assert.equal(trials.length, maxTrials);
    for (const t of trials) {
      assert.equal(t.state, 'TRIAL_STATE_COMPLETED');
      assert.equal(t.source, 'suggested');
      assert.equal(t.prompt.vector.length, 2 * 4);
      assert.equal(t.value, score(t.prompt.vector));
      assert.deepEqual(t.metrics, { distance: -t.value });
      assert.equal(typeof t.id, 'string'); // uint64 ids come back as decimal strings
    }
    const ids = trials.map((t) => BigInt(t.id));
    assert.deepEqual([...ids].sort((a, b) => (a < b ? -1 : 1)), ids);

    const study = await client.getStudy('example');
    assert.equal(study.state, 'STUDY_STATE_COMPLETED');
    assert.equal(study.completedCount, maxTrials);
    assert.equal(study.activeCount, 0);
    assert.equal(study.spec.space, 'soft');
    assert.equal(study.spec.seed, '7');

    const best = await client.getBestTrial('example');
    assert.equal(best.value, Math.max(...trials.map((t) => t.value)));

    // Paging: three trials per RPC give the same trials in the same order.
    const paged = [];
    for await (const t of client.iterTrials('example', { pageSize: 3, state: 'completed' })) {
      paged.push(t.id);
    }
    assert.deepEqual(paged, trials.map((t) => t.id));
    assert.deepEqual(await client.listTrials('example', { state: 'active' }), []);

    const { trials: more, studyDone } = await client.suggestTrials('example', 1);
    assert.equal(studyDone, true);
    assert.deepEqual(more, []);
  });

  test('status codes become PromptboError subclasses', async () => {
    await assert.rejects(client.getStudy('no-such-study'), (err) => {
      assert.ok(err instanceof promptbo.NotFoundError);
      assert.ok(err instanceof promptbo.PromptboError);
      assert.equal(err.name, 'NotFoundError');
      assert.equal(err.code, 'NOT_FOUND');
      assert.equal(err.grpcCode, 5);
      assert.match(err.message, /no-such-study/);
      return true;
    });

    await assert.rejects(
      client.createStudy('bad-spec', { strategy: 'random' }),
      promptbo.InvalidArgumentError,
    );
    await client.createStudy('taken', softSpec(2));
    const again = await client.createStudy('taken', softSpec(2));
    assert.equal(again.created, false);
    await assert.rejects(client.createStudy('taken', softSpec(3)), promptbo.AlreadyExistsError);

    const { trials } = await client.suggestTrials('taken', 1);
    const failed = await client.completeTrial('taken', trials[0].id, 0, {}, {
      failureReason: 'evaluator crashed',
    });
    assert.equal(failed.state, 'TRIAL_STATE_FAILED');
    assert.equal(failed.failureReason, 'evaluator crashed');
    await assert.rejects(
      client.completeTrial('taken', trials[0].id, 1.5),
      promptbo.FailedPreconditionError,
    );
    await assert.rejects(client.heartbeatTrial('taken', '999999'), promptbo.NotFoundError);

    await client.deleteStudy('taken');
    await assert.rejects(client.getStudy('taken'), promptbo.NotFoundError);
  });

  test('updateStudy raises the budget of a completed study', async () => {
    await client.createStudy('extended', softSpec(1));
    const { trials } = await client.suggestTrials('extended', 1);
    await client.completeTrial('extended', trials[0].id, 0.5);
    assert.equal((await client.getStudy('extended')).state, 'STUDY_STATE_COMPLETED');
    const study = await client.updateStudy('extended', { maxTrials: 2 });
    assert.equal(study.state, 'STUDY_STATE_ACTIVE');
    assert.equal(study.spec.maxTrials, 2);
    assert.equal((await client.suggestTrials('extended', 1)).trials.length, 1);
    await assert.rejects(client.updateStudy('extended'), promptbo.InvalidArgumentError);
    await assert.rejects(client.updateStudy('extended', { maxTrials: 1 }),
      (err) => err instanceof promptbo.InvalidArgumentError && /below the 2 trials/.test(err.message));
  });

  test('addTrials warm-starts and watchStudy streams events until done', async () => {
    const name = 'watched';
    await client.createStudy(name, softSpec(3));
    const added = await client.addTrials(name, [
      { prompt: { vector: [0, 0, 0, 0, 0, 0, 0, 0] }, value: -5, metrics: { note: 1 } },
    ]);
    assert.equal(added.length, 1);
    assert.equal(added[0].source, 'added');
    assert.equal(added[0].state, 'TRIAL_STATE_COMPLETED');

    const stream = client.watchStudy(name);
    const events = [];
    const watched = (async () => {
      for await (const msg of stream) {
        events.push(msg.event);
        if (msg.event === 'done') assert.equal(msg.study.state, 'STUDY_STATE_COMPLETED');
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 500)); // let the watch subscribe
    for (;;) {
      const { trials, studyDone } = await client.suggestTrials(name, 2);
      if (studyDone) break;
      for (const t of trials) {
        const hb = await client.heartbeatTrial(name, t.id);
        assert.equal(hb.state, 'TRIAL_STATE_ACTIVE');
        await client.completeTrial(name, t.id, score(t.prompt.vector));
      }
    }
    await watched;
    assert.equal(events.at(-1), 'done');
    assert.equal(events.filter((e) => e === 'completed').length, 2);
    assert.ok(events.includes('suggested'));
    const names = (await client.listStudies()).map((s) => s.name);
    assert.ok(names.includes(name));
  });

  test('createStudy transfers from an earlier study', async () => {
    const spec = { soft: { promptLength: 2, embeddingDim: 4 }, seed: 5 };
    await client.createStudy('source', { ...spec, strategy: 'random' });
    const { trials } = await client.suggestTrials('source', 6);
    for (const t of trials) await client.completeTrial('source', t.id, score(t.prompt.vector));
    await assert.rejects(client.createStudy('target', { ...spec, transferFrom: ['missing'] }),
      (err) => err instanceof promptbo.NotFoundError && /'missing' not found/.test(err.message));
    const { study } = await client.createStudy('target',
      { ...spec, transferFrom: ['source'], transfer: 'init' });
    assert.deepEqual(study.spec.transferFrom, ['source']);
    assert.equal(study.spec.transfer, 'init');
    const first = (await client.suggestTrials('target', 2)).trials;
    // the sources' best prompts take every other slot of the initial design
    assert.deepEqual(first.map((t) => t.source), ['transfer', 'suggested']);
    const [src] = await client.getTransferSources('target');
    assert.equal(src.study, 'source');
    assert.equal(src.trials, 6);
  });

  test('cancelling a watch ends the stream without an error', async () => {
    await client.createStudy('idle', softSpec(0));
    const stream = client.watchStudy('idle');
    setTimeout(() => stream.cancel(), 300);
    const got = [];
    for await (const msg of stream) got.push(msg);
    assert.deepEqual(got, []);
  });
});

describe('against a server that requires a token', { timeout: 120000 }, () => {
  let server;

  before(async () => {
    server = await PromptboServer.start({ authToken: 's3cret-token' });
  });

  after(async () => {
    if (server) await server.stop();
  });

  test('sends the bearer token as authorization metadata', async () => {
    const anonymous = new promptbo.PromptboClient(server.address, { timeoutMs: 20000 });
    const wrong = new promptbo.PromptboClient(server.address, { token: 'nope', timeoutMs: 20000 });
    const right = new promptbo.PromptboClient(server.address, {
      token: 's3cret-token',
      timeoutMs: 20000,
    });
    try {
      await assert.rejects(anonymous.listStudies(), promptbo.UnauthenticatedError);
      await assert.rejects(wrong.listStudies(), promptbo.UnauthenticatedError);
      assert.deepEqual(await right.listStudies(), []);
    } finally {
      for (const c of [anonymous, wrong, right]) c.close();
    }
  });
});

test('an unreachable server gives UnavailableError', { timeout: 30000 }, async () => {
  const client = new promptbo.PromptboClient('127.0.0.1:1', { timeoutMs: 20000 });
  try {
    await assert.rejects(client.listStudies(), promptbo.UnavailableError);
  } finally {
    client.close();
  }
});

test('a missing proto folder is reported with the option to fix it', () => {
  assert.throws(
    () => new promptbo.PromptboClient('127.0.0.1:1', { protoDir: '/nonexistent' }),
    /protoDir/,
  );
});
