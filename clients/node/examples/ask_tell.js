#!/usr/bin/env node
'use strict';
/**
 * Ask/tell against a promptbo server with a toy objective: find the 2 x 4 soft prompt closest
 * to a fixed target vector (value = minus the squared distance, maximized).
 *
 *     PROMPTBO_ADDRESS=127.0.0.1:50051 node examples/ask_tell.js
 *
 * Environment: PROMPTBO_ADDRESS (default 127.0.0.1:50051), PROMPTBO_TOKEN (bearer token),
 * PROMPTBO_STUDY (study name, default node-ask-tell), PROMPTBO_MAX_TRIALS (default 20),
 * PROMPTBO_BATCH (trials asked per round, default 2).
 */

const { PromptboClient } = require('../src');

const TARGET = [0.5, -0.25, 0.0, 0.75, -0.5, 0.25, 1.0, -1.0];

/** The toy objective: minus the squared distance of a prompt vector (8 floats) to TARGET. */
function score(vector) {
  return -vector.reduce((sum, x, i) => sum + (x - TARGET[i]) ** 2, 0);
}

async function main() {
  const address = process.env.PROMPTBO_ADDRESS || '127.0.0.1:50051';
  const name = process.env.PROMPTBO_STUDY || 'node-ask-tell';
  const maxTrials = Number(process.env.PROMPTBO_MAX_TRIALS || 20);
  const batch = Number(process.env.PROMPTBO_BATCH || 2);
  const client = new PromptboClient(address, { token: process.env.PROMPTBO_TOKEN });
  try {
    const { study, created } = await client.createStudy(name, {
      soft: { promptLength: 2, embeddingDim: 4, intrinsicDim: 3 },
      strategy: 'random',
      maxTrials,
      seed: 7,
      labels: { example: 'ask_tell.js' },
    });
    console.log(`${created ? 'created' : 'resumed'} study ${study.name} (max_trials=${maxTrials})`);

    for (;;) {
      const { trials, studyDone } = await client.suggestTrials(name, batch);
      if (studyDone || trials.length === 0) break;
      for (const trial of trials) {
        const value = score(trial.prompt.vector);
        const done = await client.completeTrial(name, trial.id, value, { distance: -value });
        console.log(`trial ${done.id}: value=${value.toFixed(4)}`);
      }
    }

    const best = await client.getBestTrial(name);
    const final = await client.getStudy(name);
    console.log(
      `study ${final.name} is ${final.state}: ${final.completedCount} completed, ` +
        `${final.failedCount} failed`,
    );
    console.log(
      `best trial ${best.id}: value=${best.value.toFixed(4)} ` +
        `vector=[${best.prompt.vector.map((x) => x.toFixed(3)).join(', ')}]`,
    );
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(`${err.name}: ${err.message}`);
    process.exitCode = 1;
  });
}

module.exports = { main, score, TARGET };
