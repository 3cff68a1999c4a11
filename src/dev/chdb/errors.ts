import { exceptionName } from '../../clickhouse/http.js';

/**
 * How ClickHouse's HTTP interface answers an exception, for the chdb front: the status that
 * ClickHouse's exceptionCodeToHTTPStatus gives the error's name, the `X-ClickHouse-Exception-Code`
 * header and a `Code: N. DB::Exception: ... (NAME) (version V)` body.
 */
const STATUS_BY_NAME: Record<string, number> = {
  REQUIRED_PASSWORD: 401,
  UNKNOWN_USER: 403,
  WRONG_PASSWORD: 403,
  AUTHENTICATION_FAILED: 403,
  SET_NON_GRANTED_ROLE: 403,
  ACCESS_DENIED: 403,
  QUERY_IS_TOO_LARGE: 413,
  NOT_IMPLEMENTED: 501,
  SOCKET_TIMEOUT: 503,
  CANNOT_OPEN_FILE: 503,
  CANNOT_SCHEDULE_TASK: 503,
  HTTP_LENGTH_REQUIRED: 411,
  TIMEOUT_EXCEEDED: 408,
  UNSUPPORTED_MEDIA_TYPE: 415,
};
for (const name of [
  'BAD_ARGUMENTS', 'CANNOT_COMPILE_REGEXP', 'CANNOT_PARSE_TEXT', 'CANNOT_PARSE_ESCAPE_SEQUENCE', 'CANNOT_PARSE_QUOTED_STRING',
  'CANNOT_PARSE_DATE', 'CANNOT_PARSE_DATETIME', 'CANNOT_PARSE_NUMBER', 'CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING', 'CANNOT_PARSE_IPV4',
  'CANNOT_PARSE_IPV6', 'CANNOT_PARSE_INPUT_ASSERTION_FAILED', 'CANNOT_PARSE_UUID', 'DUPLICATE_COLUMN', 'ILLEGAL_COLUMN',
  'UNKNOWN_ELEMENT_IN_AST', 'UNKNOWN_TYPE_OF_AST_NODE', 'THERE_IS_NO_COLUMN', 'TOO_DEEP_AST', 'TOO_BIG_AST',
  'UNEXPECTED_AST_STRUCTURE', 'SYNTAX_ERROR', 'INCORRECT_DATA', 'TYPE_MISMATCH', 'VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE',
]) STATUS_BY_NAME[name] = 400;
for (const name of [
  'UNKNOWN_TABLE', 'UNKNOWN_FUNCTION', 'UNKNOWN_IDENTIFIER', 'UNKNOWN_TYPE', 'UNKNOWN_STORAGE', 'UNKNOWN_DATABASE',
  'UNKNOWN_SETTING', 'UNKNOWN_DIRECTION_OF_SORTING', 'UNKNOWN_AGGREGATE_FUNCTION', 'UNKNOWN_FORMAT',
  'UNKNOWN_DATABASE_ENGINE', 'UNKNOWN_TYPE_OF_QUERY', 'UNKNOWN_ROLE',
]) STATUS_BY_NAME[name] = 404;

/** Numeric codes of the errors the front raises itself (ClickHouse's ErrorCodes.cpp). */
export const FRONT_ERRORS = {
  NOT_IMPLEMENTED: 48,
  UNKNOWN_SETTING: 115,
  AUTHENTICATION_FAILED: 516,
  BAD_ARGUMENTS: 36,
  UNKNOWN_EXCEPTION: 1002,
} as const;

export interface HttpException {
  status: number;
  code: number;
  body: string;
}

export function httpException(code: number, message: string, version: string): HttpException {
  const text = message.trim().replace(/^Code: \d+\. /, '');
  const body = `Code: ${code}. ${text.startsWith('DB::Exception') ? text : `DB::Exception: ${text}`} (version ${version})\n`;
  const name = exceptionName(text);
  return { status: (name ? STATUS_BY_NAME[name] : undefined) ?? 500, code, body };
}
