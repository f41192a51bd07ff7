#!/usr/bin/env node
// A whole transfer from Node.js, with @grpc/grpc-js and @grpc/proto-loader reading the
// same .proto files as the services (protos/bank/v1): open two accounts, deposit into
// the first, move part of it to the second, read both accounts back.
//
//   node tests/e2e/node/transfer.js <account service HOST:PORT> <transfer service HOST:PORT>
//
// Prints one JSON object on stdout ({transfer, from, to}) and exits 0; on a failed call,
// prints the gRPC code and message on stderr and exits 1.
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "..", "protos");
const DEADLINE_MS = 10_000;

function load() {
  const definition = protoLoader.loadSync(["bank/v1/account.proto", "bank/v1/transfer.proto"], {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto files: account_id, not accountId
    longs: String, // int64 as decimal strings, as in the proto3 JSON mapping
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).bank.v1;
}

// One unary call as a promise, with a deadline.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (error, response) => {
      if (error) {
        const code = grpc.status[error.code] ?? String(error.code);
        reject(new Error(`${method}: ${code}: ${error.details}`));
      } else {
        resolve(response);
      }
    });
  });
}

async function main(accountsAddress, transfersAddress) {
  const bank = load();
  const credentials = grpc.credentials.createInsecure();
  const accounts = new bank.AccountService(accountsAddress, credentials);
  const transfers = new bank.TransferService(transfersAddress, credentials);
  try {
    const open = (owner) =>
      call(accounts, "OpenAccount", { account_id: crypto.randomUUID(), owner, currency: "EUR" });
    const ada = await open("Ada");
    const bob = await open("Bob");
    await call(accounts, "Deposit", {
      account_id: ada.account_id,
      amount: "1000",
      request_id: "node-opening",
    });
    const transfer = await call(transfers, "CreateTransfer", {
      transfer_id: crypto.randomUUID(),
      from_account_id: ada.account_id,
      to_account_id: bob.account_id,
      amount: "250",
    });
    const from = await call(accounts, "GetAccount", { account_id: ada.account_id });
    const to = await call(accounts, "GetAccount", { account_id: bob.account_id });
    return { transfer, from, to };
  } finally {
    accounts.close();
    transfers.close();
  }
}

const [accountsAddress, transfersAddress] = process.argv.slice(2);
if (!accountsAddress || !transfersAddress) {
  process.stderr.write("usage: transfer.js <accounts HOST:PORT> <transfers HOST:PORT>\n");
  process.exit(2);
}
main(accountsAddress, transfersAddress).then(
  (result) => process.stdout.write(`${JSON.stringify(result)}\n`),
  (error) => {
    process.stderr.write(`${error.message}\n`);
    process.exit(1);
  },
);
