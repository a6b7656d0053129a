/**
 * The errors a strategy's API call rejects with, as in Python's quantlab.errors:
 * `ApiError` (Bybit's retCode in `retCode`) and one subclass per ApiResult kind.
 */

export class ApiError extends Error {
  /** @param {string} message @param {number} [retCode] Bybit's retCode, 0 when there is none */
  constructor(message, retCode = 0) {
    super(message);
    this.name = new.target.name;
    this.retCode = retCode;
  }
}

/** The exchange could not be reached, or did not answer in time. */
export class ApiNetworkError extends ApiError {}

/** The call is not allowed: unknown method or account, or the worker's lease is in doubt. */
export class ApiPermissionError extends ApiError {}

/** A halt (`qlab halt`) covers this strategy: the call would open exposure. */
export class ApiHaltedError extends ApiPermissionError {}

/** The worker's risk checks refused the call. */
export class ApiRiskError extends ApiError {}

/** ApiResult.kind -> the class the call rejects with. */
export const API_ERRORS = {
  api: ApiError,
  network: ApiNetworkError,
  permission: ApiPermissionError,
  halted: ApiHaltedError,
  risk: ApiRiskError,
};

/** A value that is not JSON: the message starts with its key path, e.g. `state['a'][0]`. */
export class NotJson extends Error {
  constructor(message) {
    super(message);
    this.name = "NotJson";
  }
}

/** A ctx.send message over its size or rate budget: it was not sent. */
export class OverBudget extends Error {
  constructor(message) {
    super(message);
    this.name = "OverBudget";
  }
}
