// Message type bytes of protocol v3, as char codes. Backend and frontend
// share some letters with different meanings, hence two enums.

export const enum Backend {
  Authentication = 0x52, // 'R'
  BackendKeyData = 0x4b, // 'K'
  ParameterStatus = 0x53, // 'S'
  ReadyForQuery = 0x5a, // 'Z'
  ErrorResponse = 0x45, // 'E'
  NoticeResponse = 0x4e, // 'N'
  NotificationResponse = 0x41, // 'A'
  CopyInResponse = 0x47, // 'G'
  CopyOutResponse = 0x48, // 'H'
  CopyBothResponse = 0x57, // 'W'
  ParseComplete = 0x31, // '1'
  BindComplete = 0x32, // '2'
  CloseComplete = 0x33, // '3'
  ParameterDescription = 0x74, // 't'
  RowDescription = 0x54, // 'T'
  NoData = 0x6e, // 'n'
}

export const enum Frontend {
  Query = 0x51, // 'Q'
  Parse = 0x50, // 'P'
  Bind = 0x42, // 'B'
  Describe = 0x44, // 'D'
  Execute = 0x45, // 'E'
  Close = 0x43, // 'C'
  Flush = 0x48, // 'H'
  Sync = 0x53, // 'S'
  FunctionCall = 0x46, // 'F'
  Terminate = 0x58, // 'X'
  CopyData = 0x64, // 'd'
  CopyDone = 0x63, // 'c'
  CopyFail = 0x66, // 'f'
  PasswordMessage = 0x70, // 'p'
}

// ReadyForQuery status bytes.
export const enum TxStatus {
  Idle = 0x49, // 'I'
  InTransaction = 0x54, // 'T'
  Failed = 0x45, // 'E'
}

// Startup-phase request codes (the int32 after the length; no type byte).
export const PROTOCOL_V3 = 196608; // 3.0
export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;

/** The protocol name a TLS client offers by ALPN (IANA's registered "postgresql"); direct TLS requires it. */
export const ALPN_POSTGRESQL = 'postgresql';
