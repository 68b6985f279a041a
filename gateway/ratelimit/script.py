"""The Lua script that decides one request against every limit of a ``RateLimit`` document, atomically.

One ``EVALSHA`` per decision: the script reads the state of every limit, decides, and writes only when
every limit admits the request, so a denied request charges nothing and no other client can slip in
between the read and the write (the over-admission bug of read-then-write limiters). The clock is
Redis's own (``TIME``), so gateway replicas with skewed clocks still agree.

Arguments::

    KEYS[i]      one key per limit, all sharing one {hash tag} (Redis Cluster: one slot)
    ARGV[1]      "gcra" | "sliding-window"
    ARGV[2]      cost (integer >= 0)
    ARGV[3i]     period of limit i in microseconds
    ARGV[3i+1]   requests of limit i
    ARGV[3i+2]   burst of limit i (GCRA capacity; the sliding window's capacity is ``requests``)

Reply: one string of integers, ``"allowed(1|0) retry_us remaining_1 reset_us_1 ... remaining_n reset_us_n"``
(a single bulk string parses several times faster on the client than an array of integers), where
``retry_us`` is how long until the request would be admitted (0 when admitted) and ``reset_us`` how
long until that limit's quota is fully available again.

GCRA (one string key per limit): the stored value is the theoretical arrival time (TAT, microseconds of
Redis time, ``%.17g`` so no precision is lost). Emission interval ``T = period / requests``, tolerance
``tau = burst * T``: a fresh key admits ``burst`` requests at once, then one per ``T``. A request of
cost ``n`` is admitted when ``max(TAT, now) + n*T - tau <= now``. The key expires when the TAT is in
the past (then it carries no information). A stored TAT past ``now + tau`` (written under a larger
tolerance: the RateLimit was changed under the same name, e.g. ``100 per 1h`` to ``100 per 1s``) is
clamped to ``now + tau`` (a key is at most one full burst in debt under the current limit) and the
clamped value is written back even when the request is denied: otherwise every later request would
clamp again from its own ``now`` and stay denied until the old TAT passed.

Sliding window (one hash per limit: ``a`` the key's anchor, ``w`` window index, ``c`` count in window
``w``, ``p`` count in the window before): the two-window weighted counter. Windows start at the key's
first request (``a``), not at multiples of the period since the epoch: a client's first ``requests``
within its first period are exactly its quota, with no window boundary falling at a random point in
its burst (which would let the weighted count admit more during the burst). The previous window's
count is weighted by the part of it still inside the sliding window, ``used = p * (1 - elapsed/period)
+ c``. Chosen over a
sorted-set log because it is O(1) in memory and time per key (three integers, whatever the quota: a
``10000 per 1d`` log would hold 10,000 members per key and trim on every request); the price is that
it assumes the previous window's requests were spread evenly, a small error in either direction that
is bounded by the previous window's count times the error in that assumption. The key expires two
windows after the last write.
"""

from __future__ import annotations

import hashlib

SCRIPT = """\
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local algo = ARGV[1]
local cost = tonumber(ARGV[2])
local n = #KEYS
local allowed = true
local retry = 0
local st = {}

for i = 1, n do
  local a = 3 * i
  local s = {period = tonumber(ARGV[a]), requests = tonumber(ARGV[a + 1]), burst = tonumber(ARGV[a + 2])}
  st[i] = s
  local wait = 0
  if algo == 'gcra' then
    s.interval = s.period / s.requests
    s.tau = s.burst * s.interval
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    if tat > now + s.tau then
      tat = now + s.tau
      s.clamped = true
    end
    s.tat = tat
    s.new = tat + cost * s.interval
    if cost > s.burst then
      wait = s.period
    else
      wait = s.new - s.tau - now
      if wait <= 1 then wait = 0 end
    end
  else
    local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p', 'a')
    local anchor = tonumber(h[4]) or now
    local idx = math.floor((now - anchor) / s.period)
    s.anchor = anchor
    local w = tonumber(h[1])
    local c = tonumber(h[2]) or 0
    local p = tonumber(h[3]) or 0
    local cur, prev = 0, 0
    if w == idx then
      cur = c
      prev = p
    elseif w == idx - 1 then
      prev = c
    end
    s.idx = idx
    s.cur = cur
    s.prev = prev
    s.elapsed = now - (anchor + idx * s.period)
    s.used = prev * (1 - s.elapsed / s.period) + cur
    if cost > s.requests then
      wait = s.period
    elseif s.used + cost > s.requests then
      if cur + cost <= s.requests then
        wait = (1 - (s.requests - cur - cost) / prev) * s.period - s.elapsed
      else
        local g = 1 - (s.requests - cost) / cur
        if g < 0 then g = 0 end
        wait = (s.period - s.elapsed) + g * s.period
      end
      if wait < 1 then wait = 1 end
    end
  end
  if wait > 0 then
    allowed = false
    if wait > retry then retry = wait end
  end
end

if not allowed then
  for i = 1, n do
    local s = st[i]
    if s.clamped then
      local ttl = math.ceil((s.tat - now) / 1000)
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], string.format('%.17g', s.tat), 'PX', ttl)
    end
  end
end

if allowed then
  retry = 0
  for i = 1, n do
    local s = st[i]
    if algo == 'gcra' then
      local ttl = math.ceil((s.new - now) / 1000)
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], string.format('%.17g', s.new), 'PX', ttl)
      s.tat = s.new
    else
      s.cur = s.cur + cost
      s.used = s.used + cost
      redis.call('HSET', KEYS[i], 'w', string.format('%.17g', s.idx), 'c', string.format('%.17g', s.cur),
        'p', string.format('%.17g', s.prev), 'a', string.format('%.17g', s.anchor))
      local ttl = math.ceil((s.anchor + (s.idx + 2) * s.period - now) / 1000)
      if ttl < 1 then ttl = 1 end
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end

local out = {allowed and '1' or '0', string.format('%d', math.ceil(retry))}
for i = 1, n do
  local s = st[i]
  local remaining, reset
  if algo == 'gcra' then
    remaining = math.floor((s.tau - (s.tat - now)) / s.interval + 1e-6)
    reset = s.tat - now
  else
    remaining = math.floor(s.requests - s.used + 1e-6)
    if s.cur > 0 then
      reset = (s.period - s.elapsed) + s.period
    elseif s.prev > 0 then
      reset = s.period - s.elapsed
    else
      reset = 0
    end
  end
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = string.format('%d', remaining)
  out[#out + 1] = string.format('%d', math.ceil(reset))
end
return table.concat(out, ' ')
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
