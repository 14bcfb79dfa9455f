/**
 * The one table of registry error codes docxy can answer with. OCI distribution codes are
 * verbatim; codes of docxy's own carry the `DOCXY_` prefix. Only the HTTP error writer turns
 * a RegistryError into a response body.
 */
export const ERROR_CODES = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  TAG_INVALID: { status: 400, message: 'manifest tag did not match URI' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  RANGE_INVALID: { status: 416, message: 'invalid content range' },
  NOT_FOUND: { status: 404, message: 'not found' },
  DOCXY_BAD_REQUEST: { status: 400, message: 'bad request' },
  DOCXY_UPSTREAM_UNREACHABLE: { status: 502, message: 'upstream registry is unreachable' },
  DOCXY_UPSTREAM_TIMEOUT: { status: 504, message: 'upstream registry timed out' },
  DOCXY_UPSTREAM_ERROR: { status: 502, message: 'upstream registry answered with an error' },
  DOCXY_UPSTREAM_AUTH: { status: 502, message: 'upstream registry refused docxy\'s credentials' },
  DOCXY_INTERNAL: { status: 500, message: 'internal error' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorBody {
  errors: Array<{ code: string; message: string; detail?: unknown }>;
}

/** An error that is meant to reach the client as a registry error body. */
export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;
  /** Headers the answer carries (a 401's challenge, a 429's Retry-After, a 405's Allow). */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message?: string,
    options: { detail?: unknown; status?: number; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message ?? ERROR_CODES[code].message, { cause: options.cause });
    this.name = 'RegistryError';
    this.code = code;
    this.status = options.status ?? ERROR_CODES[code].status;
    this.detail = options.detail;
    this.headers = options.headers ?? {};
  }

  toBody(): ErrorBody {
    const entry: ErrorBody['errors'][number] = { code: this.code, message: this.message };
    if (this.detail !== undefined) entry.detail = this.detail;
    return { errors: [entry] };
  }
}
