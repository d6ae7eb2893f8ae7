// webrtc/timebar.py's read() in JavaScript, for pages under test and the benchmark's Chromium
// viewer: 64 blocks of max(4, width / 80) pixels (or width / 80 in a scaled-down picture) from
// x = size, y = size / 2; the middle half of each block averaged over R, G and B, white above 128; 48 bits of milliseconds, then the low 16
// bits of the CRC-32 of those 6 big-endian bytes. `data` is RGBA (getImageData) of the picture's
// top rows at least. Returns the capture time in ms since the epoch, or null.
const readTimebar = (data, width, height) => {
  const crc32 = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return (c ^ 0xffffffff) >>> 0;
  };
  const BITS = 64;
  const readAt = (size) => {
    if (size < 2 || height < size * 2 || width < size * (BITS + 2)) return null;
    const top = Math.round(size / 2 + size / 4);
    const bottom = Math.max(Math.round(size / 2 + (size * 3) / 4), top + 1);
    let word = 0n;
    for (let i = 0; i < BITS; i++) {
      const x0 = size * (i + 1);
      const lo = Math.round(x0 + size / 4);
      const hi = Math.max(Math.round(x0 + (size * 3) / 4), lo + 1);
      let sum = 0, n = 0;
      for (let y = top; y < bottom; y++) {
        for (let x = lo; x < hi; x++, n++) {
          const p = (y * width + x) * 4;
          sum += (data[p] + data[p + 1] + data[p + 2]) / 3;
        }
      }
      word = (word << 1n) | (sum / n > 128 ? 1n : 0n);
    }
    const millis = word >> 16n;
    const bytes = [5, 4, 3, 2, 1, 0].map((k) => Number((millis >> BigInt(8 * k)) & 0xffn));
    return (crc32(bytes) & 0xffff) === Number(word & 0xffffn) ? Number(millis) : null;
  };
  // The picture as stamped, else one scaled down from a stamped width that is a multiple of 80
  // (a lower rung: blocks of width / 80 pixels, a fraction).
  const exact = Math.max(4, Math.floor(width / 80));
  const bar = readAt(exact);
  return bar !== null || width / 80 === exact ? bar : readAt(width / 80);
};
