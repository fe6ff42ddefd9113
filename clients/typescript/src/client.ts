/**
 * A small typed client for an organisation's own riskmesh gateway, for hospital systems on Node.
 *
 *     import { GatewayClient } from "./client";
 *     const gw = GatewayClient.fromPki("127.0.0.1:7100", "insurer", ".riskmesh/pki");
 *     console.log(await gw.getInfo());
 *     gw.close();
 *
 * The caller authenticates with its organisation's `client` certificate
 * (URI SAN spiffe://<org>/client). It trusts only the organisation's own CA and expects the
 * gateway's certificate to name `gateway.<org>.riskmesh`, whatever address it dials.
 * Messages and the raw stub are generated from proto/riskmesh/v1 into ./gen (ts-proto);
 * this wrapper turns the callback API into promises and async iterators with deadlines.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { credentials, Metadata, status, type CallOptions, type ClientUnaryCall, type ServiceError } from "@grpc/grpc-js";

import type { StudySpec } from "./gen/riskmesh/v1/common";
import {
  GatewayServiceClient,
  type CheckPeersResponse,
  type GetInfoResponse,
  type ListAuditResponse,
  type OfflineStatus,
  type Run,
  type Study,
  type VerifyAuditResponse,
  type WatchRunResponse,
} from "./gen/riskmesh/v1/gateway";
import type { ModelResult } from "./gen/riskmesh/v1/lasso";

/** The generated messages, enums and raw stubs, one namespace per proto file. */
export * as common from "./gen/riskmesh/v1/common";
export * as gateway from "./gen/riskmesh/v1/gateway";
export * as lasso from "./gen/riskmesh/v1/lasso";

/** Deadline of every unary call, as in the Python client. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** PEM material of one identity plus the CA that issued the gateway's certificate. */
export interface ClientTls {
  /** Certificate chain of the caller (e.g. <pki>/<org>/client.pem). */
  certificatePem: Buffer;
  /** Its private key (e.g. <pki>/<org>/client.key). */
  privateKeyPem: Buffer;
  /** The gateway organisation's CA (e.g. <pki>/<org>/ca.pem). */
  caPem: Buffer;
}

/** The TLS server name of an organisation's gateway certificate (its DNS SAN). */
export function gatewayServerName(org: string): string {
  return `gateway.${org}.riskmesh`;
}

/** Read <pki>/<org>/<identity>.pem, <identity>.key and the org's ca.pem (the dev PKI layout of `riskmesh pki init`). */
export function readPki(pkiDir: string, org: string, identity = "client"): ClientTls {
  const root = join(pkiDir, org);
  return {
    certificatePem: readFileSync(join(root, `${identity}.pem`)),
    privateKeyPem: readFileSync(join(root, `${identity}.key`)),
    caPem: readFileSync(join(root, "ca.pem")),
  };
}

/** The name of a gRPC status code, e.g. "PERMISSION_DENIED". */
export function statusName(code: status): string {
  return status[code] ?? `STATUS_${code}`;
}

/** A failed call as grpc-js reports it (code, details, metadata). */
export function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number";
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** Promise-returning calls of the client RPCs of riskmesh.v1.GatewayService (the Peer* RPCs are for gateways only). */
export class GatewayClient {
  /** The organisation whose gateway this client talks to. */
  readonly org: string;
  private readonly stub: GatewayServiceClient;

  constructor(address: string, org: string, tls: ClientTls) {
    const serverName = gatewayServerName(org);
    const channelCredentials = credentials.createSsl(tls.caPem, tls.privateKeyPem, tls.certificatePem);
    this.org = org;
    this.stub = new GatewayServiceClient(address, channelCredentials, {
      "grpc.ssl_target_name_override": serverName,
      "grpc.default_authority": serverName,
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
    });
  }

  /** A client for `org`'s gateway with the dev PKI layout: <pkiDir>/<org>/client.pem, client.key, ca.pem. */
  static fromPki(address: string, org: string, pkiDir: string, identity = "client"): GatewayClient {
    return new GatewayClient(address, org, readPki(pkiDir, org, identity));
  }

  close(): void {
    this.stub.close();
  }

  private unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      method.call(this.stub, request, new Metadata(), { deadline: Date.now() + DEFAULT_TIMEOUT_MS }, (error, response) => {
        if (error !== null) reject(error);
        else resolve(response);
      });
    });
  }

  /** Who the gateway is, and who it sees calling. */
  getInfo(): Promise<GetInfoResponse> {
    return this.unary(this.stub.getInfo, {});
  }

  /** Ask the gateway to call every peer gateway. */
  checkPeers(): Promise<CheckPeersResponse> {
    return this.unary(this.stub.checkPeers, {});
  }

  /** Propose (or change) a study; sourcePath is this org's CSV file and stays local. */
  async propose(spec: StudySpec, sourcePath = ""): Promise<Study> {
    return required((await this.unary(this.stub.proposeStudy, { spec, sourcePath })).study, "ProposeStudy.study");
  }

  /** Approve the exact spec digest of a study (data owners give their CSV path; the helper acknowledges). */
  async approve(studyId: string, specDigest: string, sourcePath = ""): Promise<Study> {
    return required((await this.unary(this.stub.approveStudy, { studyId, specDigest, sourcePath })).study, "ApproveStudy.study");
  }

  /**
   * Approve the other data owner's next run (org: default the other owner): its waiting changed
   * input, or the given input commitment, or else any input unchanged since its previous run.
   * The returned study's `governance` lists the approvals not used yet and the runs waiting.
   */
  async approveRun(studyId: string, org = "", commitment = ""): Promise<Study> {
    return required((await this.unary(this.stub.approveRun, { studyId, org, commitment })).study, "ApproveRun.study");
  }

  /** A study with this organisation's run governance, its disclosure floors checked against the spec, and who learns what. */
  async getStudy(studyId: string): Promise<Study> {
    return required((await this.unary(this.stub.getStudy, { studyId })).study, "GetStudy.study");
  }

  /** This organisation's material for the study's next run, made before the run (data owners; ADR 0013). */
  async offlineStatus(studyId: string): Promise<OfflineStatus> {
    return required((await this.unary(this.stub.getStudy, { studyId })).offline, "GetStudy.offline");
  }

  async listStudies(): Promise<Study[]> {
    return (await this.unary(this.stub.listStudies, {})).studies;
  }

  async startRun(studyId: string): Promise<Run> {
    return required((await this.unary(this.stub.startRun, { studyId })).run, "StartRun.run");
  }

  /** Progress events of a run until it ends (the last event carries the final run state). */
  async *watch(runId: string, timeoutMs?: number): AsyncGenerator<WatchRunResponse> {
    const options: Partial<CallOptions> = timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
    const stream = this.stub.watchRun({ runId }, new Metadata(), options);
    try {
      for await (const event of stream) yield event as WatchRunResponse;
    } finally {
      stream.cancel();
    }
  }

  /** The run and its revealed model (data owners only). */
  /** The run and its revealed model; warns on stderr when the solver did not certify the model. */
  async result(runId: string): Promise<{ run: Run; result: ModelResult }> {
    const reply = await this.unary(this.stub.getResult, { runId });
    const result = required(reply.result, "GetResult.result");
    if (result.coefficients.length > 0 && !result.converged) {
      console.warn(`warning: run ${runId}: the model is not certified (the solver stopped at its maximum of ${result.iterations} iterations); it may be far from the optimum`);
    }
    return { run: required(reply.run, "GetResult.run"), result };
  }

  async cancel(runId: string): Promise<Run> {
    return required((await this.unary(this.stub.cancelRun, { runId })).run, "CancelRun.run");
  }

  /** Runs of one study, or all runs when studyId is empty; newest first. */
  async listRuns(studyId = ""): Promise<Run[]> {
    return (await this.unary(this.stub.listRuns, { studyId })).runs;
  }

  /** Apply a run's revealed model to records (feature name → value); one prediction per record. */
  async predict(runId: string, records: Array<Record<string, number>>): Promise<number[]> {
    return (await this.unary(this.stub.predict, { runId, records: records.map((values) => ({ values })) })).predictions;
  }

  verifyAudit(): Promise<VerifyAuditResponse> {
    return this.unary(this.stub.verifyAudit, {});
  }

  /** Audit rows with seq > afterSeq, oldest first (at most `limit`; 0 = the gateway's default). */
  listAudit(afterSeq: bigint = BigInt(0), limit = 0): Promise<ListAuditResponse> {
    return this.unary(this.stub.listAudit, { afterSeq, limit });
  }
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`gateway reply without ${what}`);
  return value;
}
