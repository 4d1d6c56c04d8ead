'use strict';
// silo: a JavaScript stand-in for aws-lambda-ric's native addon
// (`rapid-client.node`, a C++ HTTP client built from aws-lambda-cpp and curl
// at `npm install` time). The official client's JavaScript is used as
// published; it loads the addon unconditionally and calls three functions
// on it, which this module provides over node:http against the Runtime API:
//
//   next()                     -> Promise<{ bodyJson, headers }>
//   done(id, body)             POST .../invocation/<id>/response
//   error(id, body, xrayCause) POST .../invocation/<id>/error
//
// `done` and `error` return at once (the addon blocks instead); `next` waits
// for them first, so requests reach the Runtime API in the addon's order.
// Loaded with `node --require` before the client: it answers the client's
// require of `aws-lambda-ric/**/rapid-client.node` with this object, and
// leaves every other native module to Node.

const http = require('node:http');
const Module = require('node:module');
const path = require('node:path');

const API_PREFIX = '/2018-06-01/runtime/invocation/';
// The Runtime API refuses larger X-Ray causes; aws-lambda-cpp drops them too.
const MAX_XRAY_CAUSE = 1024 * 1024;

function endpoint() {
  const api = process.env.AWS_LAMBDA_RUNTIME_API || '';
  const colon = api.lastIndexOf(':');
  const port = Number(api.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port)) {
    throw new Error(`AWS_LAMBDA_RUNTIME_API must be host:port, got ${JSON.stringify(api)}`);
  }
  return { hostname: api.slice(0, colon), port };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

/** One request; resolves to { status, headers, body } once the body is read. */
function request(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { ...endpoint(), method, path: urlPath, agent, headers },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    // A Buffer, not a string: Node then writes the head on its own, each
    // character of a header value as one byte (a string body would carry
    // the head in the body's encoding).
    req.end(body === undefined ? undefined : Buffer.from(body, 'utf8'));
  });
}

// The posts not yet answered: `next` goes after them.
let posted = Promise.resolve();

// Exit status when the Runtime API cannot be told an invocation's outcome
// (the invocation then ends as Runtime.ExitError, not as a timeout).
const EXIT_POST_FAILED = 70;

/**
 * A header value as aws-lambda-cpp sends it (curl: the string's UTF-8
 * bytes as they are), or undefined when it cannot be sent at all (control
 * characters). Node writes a header string as Latin-1, one byte per
 * character, and throws on a character past U+00FF: so the string handed
 * to it holds one character per UTF-8 byte.
 */
function headerValue(text) {
  if (typeof text !== 'string' || !text || /[\x00-\x08\x0a-\x1f\x7f]/.test(text)) return undefined;
  return Buffer.from(text, 'utf8').toString('latin1');
}

/**
 * POSTs `body` to `urlPath` with `headers` and the `optional` ones; if that
 * fails (the request cannot be made, or is not accepted), once more
 * without the optional headers; if that fails too, the runtime exits: a
 * Runtime API that was never told the outcome would otherwise wait for it
 * until the function's timeout.
 */
async function deliver(urlPath, body, headers, optional) {
  const attempts = Object.keys(optional).length ? [{ ...headers, ...optional }, headers] : [headers];
  for (const h of attempts) {
    try {
      const res = await request('POST', urlPath, body, h);
      if (res.status === 202) return;
      console.error(`[silo-rapid-client] POST ${urlPath}: HTTP ${res.status} ${res.body.slice(0, 1024)}`);
    } catch (e) {
      console.error(`[silo-rapid-client] POST ${urlPath}: ${e.message}`);
    }
  }
  console.error(`[silo-rapid-client] POST ${urlPath} failed: exiting so the invocation ends now`);
  process.exit(EXIT_POST_FAILED);
}

function post(what, id, body, optional) {
  const headers = {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  };
  const urlPath = `${API_PREFIX}${id}/${what}`;
  posted = posted.then(() => deliver(urlPath, body, headers, optional));
}

const client = {
  async next() {
    await posted;
    const res = await request('GET', `${API_PREFIX}next`);
    if (res.status !== 200) {
      throw new Error(`GET ${API_PREFIX}next: HTTP ${res.status} ${res.body}`);
    }
    return { bodyJson: res.body, headers: res.headers };
  },
  done(id, body) {
    post('response', id, body, {});
  },
  error(id, body, xrayCause) {
    const headers = {};
    try {
      const type = headerValue(JSON.parse(body).errorType);
      if (type) headers['Lambda-Runtime-Function-Error-Type'] = type;
    } catch {
      // Not JSON: the Runtime API takes the body as it is.
    }
    if (typeof xrayCause === 'string' && xrayCause.length < MAX_XRAY_CAUSE && !/[^\t\x20-\x7e]/.test(xrayCause)) {
      headers['Lambda-Runtime-Function-XRay-Error-Cause'] = xrayCause;
    }
    post('error', id, body, headers);
  },
};

const loadNative = Module._extensions['.node'];
Module._extensions['.node'] = function (module, filename) {
  const inRic = filename.split(path.sep).includes('aws-lambda-ric');
  if (inRic && path.basename(filename) === 'rapid-client.node') {
    module.exports = client;
    return;
  }
  return loadNative.call(this, module, filename);
};
