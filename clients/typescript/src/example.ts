/**
 * What a hospital system does with its own organisation's gateway: who is it, are the
 * peers up, which studies exist, and — given a finished run — the revealed model and a
 * prediction for a new patient at the middle of every declared feature range.
 *
 *     node dist/example.js --address 127.0.0.1:7100 --org insurer --pki .riskmesh/pki [--run RUN_ID]
 *     node dist/example.js --address 127.0.0.1:7100 --org insurer --ca ca.pem --cert client.pem --key client.key
 *
 * --org names the gateway's organisation (its CA and TLS server name); --cert/--key/--ca
 * override the files taken from --pki. Prints one `key=value` line per fact, the same
 * lines as clients/python/example.py; a refused call prints `error status=<CODE> ...` on
 * stderr and exits 1.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { GatewayClient, isServiceError, statusName, type ClientTls } from "./client";
import { roleToJSON, runStateToJSON, studyStateToJSON, type StudySpec } from "./gen/riskmesh/v1/common";

interface Options {
  address: string;
  org: string;
  tls: ClientTls;
  runId: string | undefined;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: "string" },
      org: { type: "string" },
      pki: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      ca: { type: "string" },
      run: { type: "string" },
    },
  });
  if (values.address === undefined || values.org === undefined) {
    throw new Error("usage: example --address HOST:PORT --org ORG (--pki DIR | --cert PEM --key PEM --ca PEM) [--run RUN_ID]");
  }
  const org = values.org;
  const pkiFile = (file: string, flag: string): string => {
    if (values.pki === undefined) throw new Error(`give --pki DIR or --${flag} PEM`);
    return join(values.pki, org, file);
  };
  return {
    address: values.address,
    org,
    tls: {
      certificatePem: readFileSync(values.cert ?? pkiFile("client.pem", "cert")),
      privateKeyPem: readFileSync(values.key ?? pkiFile("client.key", "key")),
      caPem: readFileSync(values.ca ?? pkiFile("ca.pem", "ca")),
    },
    runId: values.run,
  };
}

/** A record at the middle of every declared range of the model's features. */
function midpointRecord(spec: StudySpec, features: string[]): Record<string, number> {
  const ranges = new Map(spec.owners.flatMap((owner) => owner.features.map((column) => [column.name, column] as const)));
  const record: Record<string, number> = {};
  for (const feature of features) {
    const column = ranges.get(feature);
    if (column === undefined) throw new Error(`feature ${feature} is not declared in study ${spec.studyId}`);
    record[feature] = (column.min + column.max) / 2;
  }
  return record;
}

async function showRun(gw: GatewayClient, runId: string): Promise<void> {
  const { run, result } = await gw.result(runId);
  console.log(`run id=${run.runId} study=${run.studyId} state=${runStateToJSON(run.state)} joined=${result.joined}`);
  for (const c of result.coefficients) console.log(`coefficient feature=${c.feature} value=${c.value}`);
  console.log(`intercept value=${result.intercept}`);
  console.log(`certificate converged=${result.converged} gap=${result.certifiedGap} iterations=${result.iterations}`);
  const study = await gw.getStudy(run.studyId);
  if (study.spec === undefined) throw new Error(`study ${run.studyId} has no spec`);
  const features = result.coefficients.map((c) => c.feature);
  const record = midpointRecord(study.spec, features);
  const [prediction] = await gw.predict(run.runId, [record]);
  const shown = features.map((f) => `${f}:${record[f]}`).join(",");
  console.log(`prediction record=${shown} value=${prediction}`);
}

async function main(argv: string[]): Promise<number> {
  const options = parseOptions(argv);
  const gw = new GatewayClient(options.address, options.org, options.tls);
  try {
    const info = await gw.getInfo();
    console.log(`gateway org=${info.org} role=${roleToJSON(info.role)} version=${info.version} caller=${info.callerIdentity}`);
    const peers = await gw.checkPeers();
    for (const p of peers.peers) {
      const error = p.reachable ? "" : ` error=${JSON.stringify(p.error)}`;
      console.log(`peer org=${p.org} reachable=${p.reachable} role=${roleToJSON(p.role)} latency_ms=${p.latencyMs.toFixed(1)}${error}`);
    }
    const studies = await gw.listStudies();
    console.log(`studies count=${studies.length}`);
    for (const s of studies) {
      console.log(`study id=${s.spec?.studyId ?? ""} state=${studyStateToJSON(s.state)} approved_by=${s.approvedBy.join(",")}`);
    }
    if (options.runId !== undefined) await showRun(gw, options.runId);
    return 0;
  } catch (error) {
    if (!isServiceError(error)) throw error;
    console.error(`error status=${statusName(error.code)} details=${JSON.stringify(error.details)}`);
    return 1;
  } finally {
    gw.close();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(`error ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 2;
  },
);
