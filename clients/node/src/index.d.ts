// Types of @promptbo/client. Messages follow the proto3 JSON mapping: lowerCamelCase fields,
// 64-bit integers as decimal strings, enums as their names.
import type { ClientReadableStream, ChannelOptions, Metadata } from '@grpc/grpc-js';
import type { Options as LoaderOptions } from '@grpc/proto-loader';

/** A uint64/int64 as the client returns it (decimal string); inputs also accept number/bigint. */
export type Int64 = string;
export type Int64Like = string | number | bigint;

export type Goal = 'GOAL_UNSPECIFIED' | 'GOAL_MAXIMIZE' | 'GOAL_MINIMIZE';
export type GoalLike = Goal | 'maximize' | 'minimize' | 0 | 1 | 2;
export type StudyState = 'STUDY_STATE_UNSPECIFIED' | 'STUDY_STATE_ACTIVE' | 'STUDY_STATE_COMPLETED';
export type TrialState =
  | 'TRIAL_STATE_UNSPECIFIED'
  | 'TRIAL_STATE_ACTIVE'
  | 'TRIAL_STATE_COMPLETED'
  | 'TRIAL_STATE_FAILED';
export type TrialStateLike = TrialState | 'active' | 'completed' | 'failed' | 0 | 1 | 2 | 3;

export interface Timestamp {
  seconds: Int64;
  nanos: number;
}

export interface VocabularyFilter {
  topN?: { n: number; scores?: number[] } | null;
  allowed?: { indices: number[] } | null;
  filter?: 'topN' | 'allowed';
}

export interface HardPromptSpace {
  promptLength: number;
  vocabularyId: string;
  /** 0 = server default (16). */
  pcaDims?: number;
  filter?: VocabularyFilter | null;
}

export interface SoftPromptSpace {
  promptLength: number;
  embeddingDim: number;
  /** Size of the random search subspace (BBT); 0 searches all L x D coordinates. */
  intrinsicDim?: number;
  /** Half-width of the search box per coordinate (0 = 1.0). */
  bound?: number;
  embeddingStd?: number;
}

/** One candidate of a pool uploaded with `uploadPool`. */
export interface PoolSpace {
  poolId: string;
}

/** A study spec as sent: set exactly one of `hard`, `soft` and `pool`. */
export interface StudySpecInput {
  hard?: HardPromptSpace;
  soft?: SoftPromptSpace;
  pool?: PoolSpace;
  /** gp, turbo, random, index, cmaes ("" = gp); on pools: zopo, gp, random. */
  strategy?: string;
  strategyOptions?: Record<string, string>;
  goal?: GoalLike;
  objective?: string;
  maxTrials?: number;
  maxActiveTrials?: number;
  leaseSeconds?: number;
  seed?: Int64Like;
  labels?: Record<string, string>;
  /** Earlier studies of the same space whose results warm-start this one. */
  transferFrom?: string[];
  /** How the sources are used: 'both' (default), 'init' or 'surrogate'. */
  transfer?: 'both' | 'init' | 'surrogate' | '';
}

export interface StudySpec {
  hard: HardPromptSpace | null;
  soft: SoftPromptSpace | null;
  pool: PoolSpace | null;
  space: 'hard' | 'soft' | 'pool';
  strategy: string;
  strategyOptions: Record<string, string>;
  goal: Goal;
  objective: string;
  maxTrials: number;
  maxActiveTrials: number;
  leaseSeconds: number;
  seed: Int64;
  labels: Record<string, string>;
  transferFrom: string[];
  transfer: string;
}

/** A transfer source of a study and its current weight in the study's surrogate. */
export interface TransferSource {
  study: string;
  weight: number;
  /** Completed trials read from the source. */
  trials: number;
  /** Why the source is not used, or that its weight is not computed yet ("" otherwise). */
  note: string;
}

export interface Prompt {
  tokenIds: Int64[];
  tokens: string[];
  text: string;
  /** Soft prompts: promptLength x embeddingDim floats, row-major. */
  vector: number[];
  /** Pool prompts: the candidate's index in the pool (`text` is its text). */
  poolIndex?: number;
}

export interface PromptInput {
  tokenIds?: Int64Like[];
  tokens?: string[];
  text?: string;
  vector?: number[];
  poolIndex?: number;
}

export interface Trial {
  study: string;
  id: Int64;
  state: TrialState;
  prompt: Prompt | null;
  clientId: string;
  leaseDeadline: Timestamp | null;
  value: number;
  metrics: Record<string, number>;
  failureReason: string;
  createTime: Timestamp | null;
  completeTime: Timestamp | null;
  /** "suggested" or "added". */
  source: string;
}

export interface Study {
  name: string;
  state: StudyState;
  spec: StudySpec | null;
  trialCount: number;
  completedCount: number;
  failedCount: number;
  activeCount: number;
  bestTrial: Trial | null;
  createTime: Timestamp | null;
}

export interface KnownTrial {
  prompt: PromptInput;
  value: number;
  metrics?: Record<string, number>;
}

/** One result for tellMany: a value (and metrics), or a failure with its reason. */
export interface TrialResult {
  trialId: Int64Like;
  value?: number;
  metrics?: Record<string, number>;
  failureReason?: string;
}

export interface WatchStudyResponse {
  /** "suggested", "completed", "failed" or "done". */
  event: string;
  study: Study | null;
  trial: Trial | null;
}

export interface ClientOptions {
  /** Bearer token, sent as `authorization: Bearer <token>` metadata. */
  token?: string;
  /** PEM CA certificate(s) of the server; enables TLS. */
  rootCerts?: Buffer | string;
  /** TLS with the system's root certificates (implied by rootCerts). */
  tls?: boolean;
  /** Folder holding promptbo/v1/*.proto (default: the repository's protos/ or $PROMPTBO_PROTO_DIR). */
  protoDir?: string;
  /** Deadline of each unary RPC in milliseconds (default 60000). */
  timeoutMs?: number;
  /** Identifies this worker to the server (default: a random one). */
  clientId?: string;
  channelOptions?: ChannelOptions;
}

export interface ListTrialsOptions {
  state?: TrialStateLike;
  /** Trials per RPC (default 500, at most 1000). */
  pageSize?: number;
}

export class PromptboClient {
  constructor(address?: string, options?: ClientOptions);
  readonly address: string;
  readonly clientId: string;
  timeoutMs: number;
  close(): void;
  createStudy(
    name: string,
    spec: StudySpecInput,
    options?: { requestId?: string },
  ): Promise<{ study: Study; created: boolean }>;
  uploadPool(
    texts: string[],
    embeddings: ArrayLike<number>[],
    options?: { embeddingModel?: string; chunkBytes?: number },
  ): Promise<string>;
  getStudy(name: string): Promise<Study>;
  getTransferSources(name: string): Promise<TransferSource[]>;
  listStudies(): Promise<Study[]>;
  deleteStudy(name: string): Promise<void>;
  updateStudy(name: string, changes: { maxTrials?: number; maxActiveTrials?: number }): Promise<Study>;
  suggestTrials(
    study: string,
    count?: number,
    clientId?: string,
  ): Promise<{ trials: Trial[]; studyDone: boolean }>;
  completeTrial(
    study: string,
    trialId: Int64Like,
    value: number,
    metrics?: Record<string, number>,
    options?: { failureReason?: string; clientId?: string },
  ): Promise<Trial>;
  tellAndAsk(
    study: string,
    trialId: Int64Like,
    value: number,
    metrics?: Record<string, number>,
    options?: { count?: number; clientId?: string },
  ): Promise<{ trial: Trial; nextTrials: Trial[]; studyDone: boolean }>;
  tellMany(
    study: string,
    results: TrialResult[],
    options?: { count?: number; clientId?: string },
  ): Promise<{ trials: Trial[]; nextTrials: Trial[]; studyDone: boolean }>;
  heartbeatTrial(study: string, trialId: Int64Like, clientId?: string): Promise<Trial>;
  iterTrials(study: string, options?: ListTrialsOptions): AsyncGenerator<Trial, void, undefined>;
  listTrials(study: string, options?: ListTrialsOptions): Promise<Trial[]>;
  getBestTrial(study: string): Promise<Trial | null>;
  getRecommendation(study: string): Promise<{
    recommendation: Record<string, unknown> | null;
    bestObserved: Trial | null;
    reference: Trial | null;
  }>;
  addTrials(study: string, trials: KnownTrial[]): Promise<Trial[]>;
  watchStudy(study: string): ClientReadableStream<WatchStudyResponse>;
}

export type StatusName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

export class PromptboError extends Error {
  constructor(
    message: string,
    options?: { code?: StatusName; grpcCode?: number; metadata?: Metadata; cause?: unknown },
  );
  static readonly code: StatusName;
  /** gRPC status code name, e.g. 'NOT_FOUND'. */
  readonly code: StatusName;
  /** gRPC status code number, e.g. 5. */
  readonly grpcCode: number;
  readonly metadata?: Metadata;
}
export class InvalidArgumentError extends PromptboError {}
export class NotFoundError extends PromptboError {}
export class AlreadyExistsError extends PromptboError {}
export class FailedPreconditionError extends PromptboError {}
export class ResourceExhaustedError extends PromptboError {}
export class UnauthenticatedError extends PromptboError {}
export class PermissionDeniedError extends PromptboError {}
export class UnavailableError extends PromptboError {}

export const ERRORS_BY_CODE: Readonly<Record<string, typeof PromptboError>>;
export function fromGrpcError(err: unknown): unknown;

export const DEFAULT_ADDRESS: string;
export const DEFAULT_PROTO_DIR: string;
export const LOADER_OPTIONS: Readonly<LoaderOptions>;
/** The loaded promptbo.v1 package (service constructors and message types). */
export function loadProtos(protoDir?: string): any;
export function toDate(ts: Timestamp | null | undefined): Date | null;
/** The content id of a pool (`table`: the N x D embeddings as one Float32Array). */
export function poolId(
  texts: string[],
  table: Float32Array,
  dim: number,
  embeddingModel?: string,
): string;
