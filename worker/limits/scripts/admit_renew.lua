-- Push the expiry of this worker's waiters in the endpoint's admission queue
-- (lib/admission_queue.lua) a lease ttl ahead, and say which of them no longer wait: those granted
-- a slot (their grant may not have reached the worker) and those the queue lost (dropped when Redis
-- lost data).
--
-- KEYS[1]  lease     the endpoint's leases: sorted set of slot tokens by expiry
-- KEYS[2]  admit     the endpoint's admission queue (lib/admission_queue.lua): its order
-- KEYS[3]  byage     its waiters by band, tenant and age
-- KEYS[4]  info      its waiters' entries and clocks
-- KEYS[5]  age       its waiters by their task's creation time
-- ARGV[1]  ttl_ms    a lease's time to live
-- ARGV[2+] tokens    this worker's waiters
-- Returns the tokens that no longer wait.
local lease = KEYS[1]
local q = {admit = KEYS[2], byage = KEYS[3], info = KEYS[4], age = KEYS[5]}
local ttl_ms = tonumber(ARGV[1])
-- #include worker.limits:now_ms
-- #include worker.limits:admission_queue
local gone = {}
for i = 2, #ARGV do
  local token = ARGV[i]
  local entry = admit_entry(q, token)
  if entry then
    entry.expiry = now + ttl_ms
    admit_store(q, token, entry)
  else
    gone[#gone + 1] = token
  end
end
admit_keep(q, ttl_ms)
return gone
