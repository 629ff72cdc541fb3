// Encoding numbers (RFC 6143 §7.7 and the community registry in rfbproto), and which of them this
// codec can frame. The gateway replays a viewer's SetEncodings to QEMU; anything in that list the
// server-side decoder cannot frame would make QEMU send bytes we cannot delimit, so the gateway
// passes the list through `supportedEncodings` first.

export const RfbEncoding = {
  Raw: 0,
  CopyRect: 1,
  RRE: 2,
  CoRRE: 4,
  Hextile: 5,
  Zlib: 6,
  Tight: 7,
  ZRLE: 16,
  ZYWRLE: 17,
  TightPNG: -260,
  // Pseudo-encodings carried as rectangles.
  DesktopSize: -223,
  LastRect: -224,
  Cursor: -239,
  PointerTypeChange: -257,
  QemuExtendedKeyEvent: -258,
  QemuAudio: -259,
  LedState: -261,
  DesktopName: -307,
  ExtendedDesktopSize: -308,
  AlphaCursor: -314,
  /** VMware "WMVi": the server announces a new pixel format, in effect from the next rectangle. */
  PixelFormatChange: 0x574d5669,
  // Pseudo-encodings that are only client settings or enable other messages; never rectangles.
  JpegQualityLevel0: -32,
  JpegQualityLevel9: -23,
  CompressLevel0: -256,
  CompressLevel9: -247,
  Fence: -312,
  ContinuousUpdates: -313,
  ExtendedClipboard: -1063131698,
} as const;

/** Encodings whose rectangles carry pixels: they count towards changed pixels. */
const PIXEL_ENCODINGS: ReadonlySet<number> = new Set([
  RfbEncoding.Raw,
  RfbEncoding.CopyRect,
  RfbEncoding.RRE,
  RfbEncoding.CoRRE,
  RfbEncoding.Hextile,
  RfbEncoding.Zlib,
  RfbEncoding.Tight,
  RfbEncoding.ZRLE,
  RfbEncoding.ZYWRLE,
  RfbEncoding.TightPNG,
]);

/** Pseudo-encodings the server-message decoder frames as rectangles. */
const FRAMED_PSEUDO_ENCODINGS: ReadonlySet<number> = new Set([
  RfbEncoding.DesktopSize,
  RfbEncoding.LastRect,
  RfbEncoding.Cursor,
  RfbEncoding.PointerTypeChange,
  RfbEncoding.QemuExtendedKeyEvent,
  RfbEncoding.QemuAudio,
  RfbEncoding.LedState,
  RfbEncoding.DesktopName,
  RfbEncoding.ExtendedDesktopSize,
  RfbEncoding.AlphaCursor,
  RfbEncoding.PixelFormatChange,
]);

const NAMES: ReadonlyMap<number, string> = new Map(Object.entries(RfbEncoding).map(([name, value]) => [value, name]));

export function isPixelEncoding(encoding: number): boolean {
  return PIXEL_ENCODINGS.has(encoding);
}

/** True for encodings the server-message decoder can delimit when they come back as rectangles. */
export function isFramedEncoding(encoding: number): boolean {
  return PIXEL_ENCODINGS.has(encoding) || FRAMED_PSEUDO_ENCODINGS.has(encoding);
}

/**
 * Client-side settings that change no framing we do not handle: JPEG quality and compression
 * levels, and the pseudo-encodings that enable messages this codec frames (fences, continuous
 * updates, the extended clipboard's cut-text form).
 */
function isHarmlessSetting(encoding: number): boolean {
  return (
    (encoding >= RfbEncoding.JpegQualityLevel0 && encoding <= RfbEncoding.JpegQualityLevel9) ||
    (encoding >= RfbEncoding.CompressLevel0 && encoding <= RfbEncoding.CompressLevel9) ||
    encoding === RfbEncoding.Fence ||
    encoding === RfbEncoding.ContinuousUpdates ||
    encoding === RfbEncoding.ExtendedClipboard
  );
}

/**
 * A viewer's SetEncodings list without what the decoders cannot frame (in order). noVNC, for one,
 * asks for VMware cursors, xvp and extended mouse buttons (which changes PointerEvent's length);
 * QEMU 7.2 ignores those today, but a newer QEMU honouring one would desynchronize the stream.
 */
export function supportedEncodings(requested: readonly number[]): number[] {
  return requested.filter((e) => isFramedEncoding(e) || isHarmlessSetting(e));
}

/** "Tight", "DesktopSize", or the number for encodings without a name here. */
export function encodingName(encoding: number): string {
  return NAMES.get(encoding) ?? String(encoding);
}
