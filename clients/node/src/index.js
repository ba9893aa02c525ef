'use strict';
/**
 * A promise-based Node.js client of the promptbo optimizer service (promptbo.v1).
 *
 *     const { PromptboClient } = require('@promptbo/client');
 *     const client = new PromptboClient('127.0.0.1:50051', { token: process.env.PROMPTBO_TOKEN });
 *     await client.createStudy('toy', {
 *       soft: { promptLength: 2, embeddingDim: 4, intrinsicDim: 3 }, strategy: 'random', maxTrials: 20,
 *     });
 *     const { trials } = await client.suggestTrials('toy', 2);
 *     for (const t of trials) await client.completeTrial('toy', t.id, score(t.prompt.vector));
 *
 * Messages are plain objects with lowerCamelCase field names, as in the proto3 JSON mapping.
 * The .proto files are loaded at runtime with @grpc/proto-loader and these settings:
 *
 * - 64-bit integers (trial ids, `seed`, `tokenIds`) come back as decimal strings (`longs: String`,
 *   like proto3 JSON); arguments accept a number, a decimal string or a bigint.
 * - Enums come back as their names ('TRIAL_STATE_COMPLETED'); arguments accept a name, a number, or
 *   the short forms this module documents ('completed', 'minimize').
 * - Unset fields are filled with their defaults (`defaults: true`); unset message fields are null.
 * - A oneof reports which member is set in a virtual field (`spec.space === 'soft'`).
 * - Timestamps are `{ seconds: string, nanos: number }`; `toDate()` converts one.
 *
 * Failed RPCs reject with the `PromptboError` subclass of their status code (see errors.js).
 */

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const errors = require('./errors');

const DEFAULT_ADDRESS = '127.0.0.1:50051';
/**
 * In a checkout, the repository's protos/ folder (relative to clients/node/src/index.js);
 * in an installed package, the copy it ships in protos/ (made by `npm pack`).
 */
const REPO_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'protos');
const DEFAULT_PROTO_DIR = fs.existsSync(path.join(REPO_PROTO_DIR, 'promptbo', 'v1'))
  ? REPO_PROTO_DIR
  : path.resolve(__dirname, '..', 'protos');
const SERVICE_PROTO = 'promptbo/v1/optimizer_service.proto';
const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
/** Retries UNAVAILABLE with backoff, as the Python client does. */
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: [{ service: 'promptbo.v1.OptimizerService' }],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.2s',
        maxBackoff: '5s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
});
const TRIAL_STATES = {
  unspecified: 'TRIAL_STATE_UNSPECIFIED',
  active: 'TRIAL_STATE_ACTIVE',
  completed: 'TRIAL_STATE_COMPLETED',
  failed: 'TRIAL_STATE_FAILED',
};
const GOALS = {
  unspecified: 'GOAL_UNSPECIFIED',
  maximize: 'GOAL_MAXIMIZE',
  minimize: 'GOAL_MINIMIZE',
};

const packageCache = new Map();

/**
 * Loads the promptbo.v1 package from `protoDir` (default: the PROMPTBO_PROTO_DIR environment
 * variable, else the repository's protos/ in a checkout, else the package's own copy). Cached per folder.
 */
function loadProtos(protoDir) {
  const dir = path.resolve(protoDir || process.env.PROMPTBO_PROTO_DIR || DEFAULT_PROTO_DIR);
  let pkg = packageCache.get(dir);
  if (!pkg) {
    const file = path.join(dir, SERVICE_PROTO);
    if (!fs.existsSync(file)) {
      throw new errors.PromptboError(
        `cannot find ${SERVICE_PROTO} under ${dir}; pass the protos folder as the ` +
          "'protoDir' option or set PROMPTBO_PROTO_DIR",
        { code: 'INVALID_ARGUMENT' },
      );
    }
    const definition = protoLoader.loadSync(SERVICE_PROTO, { ...LOADER_OPTIONS, includeDirs: [dir] });
    pkg = grpc.loadPackageDefinition(definition).promptbo.v1;
    packageCache.set(dir, pkg);
  }
  return pkg;
}

/** The `N x D` embeddings as one little-endian Float32Array, checked against the texts. */
function poolTable(texts, embeddings) {
  if (!Array.isArray(texts) || texts.length === 0 || texts.length !== embeddings.length) {
    throw new errors.InvalidArgumentError(
      `a pool needs one embedding per text; got ${texts && texts.length} texts and ` +
        `${embeddings && embeddings.length} embeddings`,
      { code: 'INVALID_ARGUMENT' },
    );
  }
  const dim = embeddings[0].length;
  const table = new Float32Array(texts.length * dim);
  embeddings.forEach((row, i) => {
    if (row.length !== dim) {
      throw new errors.InvalidArgumentError(
        `embedding ${i} has ${row.length} numbers, the first has ${dim}`,
        { code: 'INVALID_ARGUMENT' },
      );
    }
    table.set(row, i * dim);
  });
  return { table, dim };
}

/**
 * The content id of a pool, as the server computes it: sha256 over a tag, the table's shape
 * (two little-endian int64), its float32 rows, then the embedding model's name and every text,
 * each as a little-endian uint32 byte length and its UTF-8 bytes.
 */
function poolId(texts, table, dim, embeddingModel = '') {
  const h = crypto.createHash('sha256');
  h.update(Buffer.from('promptbo-pool-v1'));
  const shape = Buffer.alloc(16);
  shape.writeBigInt64LE(BigInt(texts.length), 0);
  shape.writeBigInt64LE(BigInt(dim), 8);
  h.update(shape);
  h.update(Buffer.from(table.buffer, table.byteOffset, table.byteLength));
  for (const t of [embeddingModel, ...texts]) {
    const b = Buffer.from(t, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length, 0);
    h.update(len);
    h.update(b);
  }
  return h.digest('hex');
}

/** Converts a Timestamp message to a Date (null for an unset or zero timestamp). */
function toDate(ts) {
  if (!ts) return null;
  const ms = Number(ts.seconds) * 1000 + Math.floor((ts.nanos || 0) / 1e6);
  return ms === 0 ? null : new Date(ms);
}

function enumValue(value, shortNames, what) {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'number') return value;
  const name = shortNames[String(value).toLowerCase()] || String(value).toUpperCase();
  if (!Object.values(shortNames).includes(name)) {
    throw new errors.InvalidArgumentError(
      `unknown ${what} ${JSON.stringify(value)}; use one of ${Object.keys(shortNames).join(', ')}`,
    );
  }
  return name;
}

function uint64(value, what) {
  const s = typeof value === 'bigint' ? value.toString() : String(value);
  if (!/^\d+$/.test(s)) {
    throw new errors.InvalidArgumentError(`${what} must be a non-negative integer, got ${value}`);
  }
  return s;
}

class PromptboClient {
  /**
   * @param {string} [address] host:port of the server (default 127.0.0.1:50051)
   * @param {object} [options]
   * @param {string} [options.token] bearer token, sent as `authorization: Bearer <token>`
   * @param {Buffer|string} [options.rootCerts] PEM CA certificate(s) of the server; enables TLS
   * @param {boolean} [options.tls] use TLS with the system's roots (implied by rootCerts)
   * @param {string} [options.protoDir] folder holding promptbo/v1/*.proto
   * @param {number} [options.timeoutMs] deadline of each unary RPC (default 60000)
   * @param {string} [options.clientId] identifies this worker to the server (default: random)
   * @param {object} [options.channelOptions] extra @grpc/grpc-js channel options
   */
  constructor(address = DEFAULT_ADDRESS, options = {}) {
    const { token, rootCerts, tls, protoDir, timeoutMs = 60000, clientId, channelOptions } = options;
    this.address = address;
    this.timeoutMs = timeoutMs;
    this.clientId = clientId || `node-${crypto.randomBytes(6).toString('hex')}`;
    this._metadata = new grpc.Metadata();
    if (token) this._metadata.set('authorization', `Bearer ${token}`);
    let credentials;
    if (rootCerts || tls) {
      const roots = typeof rootCerts === 'string' ? Buffer.from(rootCerts) : rootCerts || null;
      credentials = grpc.credentials.createSsl(roots);
    } else {
      credentials = grpc.credentials.createInsecure();
    }
    const pkg = loadProtos(protoDir);
    this._stub = new pkg.OptimizerService(address, credentials, {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.enable_retries': 1,
      'grpc.service_config': SERVICE_CONFIG,
      ...channelOptions,
    });
  }

  /** Calls a unary RPC; resolves with its response, rejects with a PromptboError. */
  _call(method, request) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      this._stub[method](request, this._metadata, { deadline }, (err, response) => {
        if (err) reject(errors.fromGrpcError(err));
        else resolve(response);
      });
    });
  }

  /** Closes the channel; pending calls fail with CANCELLED. */
  close() {
    this._stub.close();
  }

  /**
   * Uploads a pool of candidate prompts for pool studies (`spec.pool = { poolId }`), in chunks
   * of about `chunkBytes`. `texts` are the distinct candidate texts; `embeddings` is one array
   * (or Float32Array) of equal length per text. Resolves with the pool's content id
   * (`poolId(...)`); uploading the same pool again is a no-op that returns the same id.
   */
  async uploadPool(texts, embeddings, { embeddingModel = '', chunkBytes = 1 << 20 } = {}) {
    const { table, dim } = poolTable(texts, embeddings);
    const expectedId = poolId(texts, table, dim, embeddingModel);
    const size = texts.length;
    const longest = Math.max(...texts.map((t) => Buffer.byteLength(t, 'utf8')));
    const rowsPerChunk = Math.max(1, Math.floor(chunkBytes / (dim * 4 + longest + 16)));
    const bytes = Buffer.from(table.buffer, table.byteOffset, table.byteLength);
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + Math.max(this.timeoutMs, 600000));
      const call = this._stub.UploadPool(this._metadata, { deadline }, (err, response) => {
        if (err) reject(errors.fromGrpcError(err));
        else resolve(response.poolId);
      });
      for (let start = 0; start < size; start += rowsPerChunk) {
        const stop = Math.min(size, start + rowsPerChunk);
        const chunk = {
          texts: texts.slice(start, stop),
          embeddings: bytes.subarray(start * dim * 4, stop * dim * 4),
        };
        if (start === 0) Object.assign(chunk, { size, embeddingDim: dim, expectedId, embeddingModel });
        call.write(chunk);
      }
      call.end();
    });
  }

  /**
   * Creates a study, or returns the existing one of that name when its spec is equal (or when
   * `requestId` matches the call that created it). Resolves with `{ study, created }`.
   * `spec.goal` accepts 'maximize'/'minimize' as well as the enum names. `spec.transferFrom`
   * names earlier studies of the same space to warm-start from; `spec.transfer` says how
   * ('both' (default), 'init' or 'surrogate').
   */
  async createStudy(name, spec, { requestId } = {}) {
    const s = { ...spec };
    if (s.goal !== undefined) s.goal = enumValue(s.goal, GOALS, 'goal');
    if (s.seed !== undefined) s.seed = uint64(s.seed, 'seed');
    return this._call('CreateStudy', {
      name,
      spec: s,
      requestId: requestId || crypto.randomUUID(),
    });
  }

  /** Resolves with the study named `name`; NotFoundError if there is none. */
  async getStudy(name) {
    return (await this._call('GetStudy', { name })).study;
  }

  /**
   * Resolves with the study's transfer sources (`spec.transferFrom`), each
   * `{ study, weight, trials, note }`: its current weight in the study's surrogate, the
   * completed trials read from it, and why it is not used (or that its weight is not known
   * yet). Empty for a study without transfer.
   */
  async getTransferSources(name) {
    return (await this._call('GetStudy', { name })).transferSources;
  }

  /** Resolves with every study of the server. */
  async listStudies() {
    const studies = [];
    let pageToken = '';
    do {
      const page = await this._call('ListStudies', { pageToken });
      studies.push(...page.studies);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return studies;
  }

  /** Deletes a study and its trials. */
  async deleteStudy(name) {
    await this._call('DeleteStudy', { name });
  }

  /**
   * Changes a study's budget (`maxTrials`, 0: no limit) and/or its cap on trials in flight
   * (`maxActiveTrials`); fields left out stay as they are. Raising the budget of a completed
   * study reactivates it. Resolves with the study.
   */
  async updateStudy(name, { maxTrials, maxActiveTrials } = {}) {
    const spec = {};
    const paths = [];
    if (maxTrials !== undefined) { spec.maxTrials = maxTrials; paths.push('max_trials'); }
    if (maxActiveTrials !== undefined) {
      spec.maxActiveTrials = maxActiveTrials;
      paths.push('max_active_trials');
    }
    if (!paths.length) {
      throw new errors.InvalidArgumentError('updateStudy needs maxTrials and/or maxActiveTrials',
        { code: 'INVALID_ARGUMENT' });
    }
    return (await this._call('UpdateStudy', { name, spec, updateMask: { paths } })).study;
  }

  /**
   * Asks for up to `count` trials to evaluate. Resolves with `{ trials, studyDone }`;
   * `studyDone` is true (and `trials` empty) once the study's budget is used up.
   * A client that asks again first gets back its own still-active trials.
   */
  async suggestTrials(study, count = 1, clientId = this.clientId) {
    return this._call('SuggestTrials', { study, count, clientId });
  }

  /**
   * Reports the `value` (and optional `metrics`, a name -> number object) of an active trial,
   * or its failure when `failureReason` is given. Resolves with the updated trial.
   */
  async completeTrial(study, trialId, value, metrics = {}, { failureReason = '', clientId } = {}) {
    const response = await this._call('CompleteTrial', {
      study,
      trialId: uint64(trialId, 'trialId'),
      value: failureReason ? 0 : value,
      metrics,
      failureReason,
      clientId: clientId ?? this.clientId,
    });
    return response.trial;
  }

  /**
   * Reports a trial's `value` (and `metrics`) and asks for up to `count` next trials in the
   * same round trip. Resolves with `{ trial, nextTrials, studyDone }`; the result is stored
   * even when `nextTrials` comes back empty (budget used up, or none to hand out now).
   */
  async tellAndAsk(study, trialId, value, metrics = {}, { count = 1, clientId } = {}) {
    const response = await this._call('CompleteTrial', {
      study,
      trialId: uint64(trialId, 'trialId'),
      value,
      metrics,
      clientId: clientId ?? this.clientId,
      suggestCount: count,
    });
    return {
      trial: response.trial,
      nextTrials: response.nextTrials ?? [],
      studyDone: Boolean(response.studyDone),
    };
  }

  /**
   * Reports several results in one round trip: `results` is a list of
   * `{ trialId, value, metrics?, failureReason? }`; all are recorded or, on an error, none.
   * With `count > 0` it also hands out up to `count` next trials. Resolves with
   * `{ trials, nextTrials, studyDone }`, `trials` in the order of `results`.
   */
  async tellMany(study, results, { count = 0, clientId } = {}) {
    const response = await this._call('CompleteTrials', {
      study,
      results: results.map((r, i) => ({
        trialId: uint64(r.trialId, `results[${i}].trialId`),
        value: r.value ?? 0,
        metrics: r.metrics ?? {},
        failureReason: r.failureReason ?? '',
      })),
      clientId: clientId ?? this.clientId,
      suggestCount: count,
    });
    return {
      trials: response.trials ?? [],
      nextTrials: response.nextTrials ?? [],
      studyDone: Boolean(response.studyDone),
    };
  }

  /** Extends the lease of an active trial; resolves with the trial. */
  async heartbeatTrial(study, trialId, clientId = this.clientId) {
    const response = await this._call('HeartbeatTrial', {
      study,
      trialId: uint64(trialId, 'trialId'),
      clientId,
    });
    return response.trial;
  }

  /**
   * Iterates over a study's trials by increasing id, fetching pages as it goes.
   * `state` ('active', 'completed', 'failed' or an enum name) keeps only those trials.
   */
  async *iterTrials(study, { state, pageSize = 500 } = {}) {
    const stateValue = enumValue(state, TRIAL_STATES, 'trial state');
    let pageToken = '';
    do {
      const page = await this._call('ListTrials', { study, state: stateValue, pageSize, pageToken });
      yield* page.trials;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Resolves with all of a study's trials (every page); options as for `iterTrials`. */
  async listTrials(study, options = {}) {
    const out = [];
    for await (const trial of this.iterTrials(study, options)) out.push(trial);
    return out;
  }

  /** Resolves with the best completed trial of a study, or null while there is none. */
  async getBestTrial(study) {
    return (await this._call('GetBestTrial', { study })).trial;
  }

  /**
   * Resolves with `{ recommendation, bestObserved, reference }`: the prompt the study
   * recommends (posterior mean among the prompts backed by the most examples) with its
   * estimate, 95% interval and example count, the best observed trial, and the unprompted
   * reference trial (each null when absent).
   */
  async getRecommendation(study) {
    const r = await this._call('GetRecommendation', { study });
    return {
      recommendation: r.recommendation || null,
      bestObserved: r.bestObserved || null,
      reference: r.reference || null,
    };
  }

  /**
   * Adds prompts with known values as completed trials (warm starts). `trials` is a list of
   * `{ prompt, value, metrics }`; resolves with the stored trials.
   */
  async addTrials(study, trials) {
    return (await this._call('AddTrials', { study, trials })).trials;
  }

  /**
   * Streams a study's progress events (`{ event, study, trial }`, event one of 'suggested',
   * 'completed', 'failed', 'done') until the study completes or `stream.cancel()` is called.
   * Returns the @grpc/grpc-js readable stream; it is async-iterable, its errors are
   * PromptboErrors, and a cancel() by the caller ends it without an error.
   */
  watchStudy(study) {
    const call = this._stub.WatchStudy({ study }, this._metadata);
    let cancelled = false;
    const cancel = call.cancel.bind(call);
    call.cancel = () => {
      cancelled = true;
      cancel();
    };
    const emit = call.emit.bind(call);
    call.emit = (event, ...args) => {
      if (event !== 'error') return emit(event, ...args);
      if (cancelled && args[0] && args[0].code === grpc.status.CANCELLED) return false;
      return emit('error', errors.fromGrpcError(args[0]));
    };
    return call;
  }
}

module.exports = {
  PromptboClient,
  DEFAULT_ADDRESS,
  DEFAULT_PROTO_DIR,
  LOADER_OPTIONS,
  loadProtos,
  poolId,
  toDate,
  ...errors,
};
