/**
 * Where a pack stream goes on in time when it is placed at positions (a Seek or Subscribe
 * with positions, or a start at a group's committed positions): at the time every position
 * carries (`Position.timestamp`: a pack's endTs for its endPositions, as Milvus' MsgPosition
 * carries its time tick) when they all carry the same one, else at 0, as without a time. So
 * a seek to a pack's endPositions goes on with a pack that begins where that one ended.
 * Shared by the broker (which begins the next pack there) and the SDK (which resumes from it).
 */
export function packBeginOf(positions: ReadonlyArray<{ timestamp?: number | null }>): number {
  if (positions.length === 0) return 0;
  const first = Number(positions[0]!.timestamp ?? 0);
  for (const p of positions) if (Number(p.timestamp ?? 0) !== first) return 0;
  return first > 0 ? first : 0;
}
