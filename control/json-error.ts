/**
 * Where JSON text stops being JSON: V8's JSON.parse messages do not always
 * carry a position ("Unexpected token ',', ..."), and in a rule set of
 * megabytes a person needs the line and column. `jsonErrorOffset` walks the
 * text once (iteratively, no values built) and returns the offset of the
 * first character that cannot continue a JSON document, or -1 when it is valid.
 */

const WS = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

export function jsonErrorOffset(text: string): number {
  const n = text.length;
  let i = 0;
  // open containers: 1 object, 2 array
  const stack: number[] = [];
  const skipWs = () => {
    while (i < n && WS(text.charCodeAt(i))) i++;
  };
  const string = (): boolean => {
    i++; // opening quote
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return true;
      }
      if (c < 0x20) return false;
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
            i += 2;
            return false;
          }
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else {
          i++;
          return false;
        }
      } else i++;
    }
    return false;
  };
  const scalar = (): boolean => {
    const c = text[i];
    if (c === '"') return string();
    for (const lit of ['true', 'false', 'null']) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return true;
      }
    }
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (m === null || m[0] === '' || m[0] === '-') return false;
    i += m[0].length;
    return true;
  };
  const key = (): boolean => {
    skipWs();
    if (text[i] !== '"' || !string()) return false;
    skipWs();
    if (text[i] !== ':') return false;
    i++;
    return true;
  };
  const OBJ = 1;
  const ARR = 2;
  let expectValue = true;
  for (;;) {
    skipWs();
    if (expectValue) {
      const c = text[i];
      if (c === '{') {
        i++;
        skipWs();
        if (text[i] === '}') {
          i++;
          expectValue = false;
          continue;
        }
        stack.push(OBJ);
        if (!key()) return Math.min(i, n);
        continue;
      }
      if (c === '[') {
        i++;
        skipWs();
        if (text[i] === ']') {
          i++;
          expectValue = false;
          continue;
        }
        stack.push(ARR);
        continue;
      }
      if (i >= n || !scalar()) return Math.min(i, n);
      expectValue = false;
      continue;
    }
    if (stack.length === 0) return i === n ? -1 : i;
    const top = stack[stack.length - 1];
    const c = text[i];
    if (c === ',') {
      i++;
      if (top === OBJ && !key()) return Math.min(i, n);
      expectValue = true;
      continue;
    }
    if ((top === OBJ && c === '}') || (top === ARR && c === ']')) {
      i++;
      stack.pop();
      continue;
    }
    return Math.min(i, n);
  }
}

/** "line 3, column 14" of an offset. */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let last = -1;
  for (let j = text.indexOf('\n'); j >= 0 && j < offset; j = text.indexOf('\n', j + 1)) {
    line++;
    last = j;
  }
  return { line, column: offset - last };
}
