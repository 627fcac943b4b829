-- auth-request.lua: HAProxy asks the forward-auth gateway about a request, with its built-in HTTP client.
--
-- Load it in haproxy.cfg's global section (`lua-load /etc/haproxy/auth-request.lua`) and call it as an
-- http-request action with the gateway's check URL:
--
--   http-request lua.auth_request http://127.0.0.1:4180/auth/check
--
-- It sends GET <url> with the client's Cookie and Authorization (the session), Accept and X-Requested-With,
-- any method-override header (the gateway refuses one naming another method), and the original request as
-- the gateway's forwarded-header contract describes it: X-Forwarded-Method, -Proto, -Host (the Host header
-- the app is sent) and -Uri (the path and query the app is sent). No other client header reaches the
-- gateway, so a client's X-Original-* or X-Forwarded-* never does. The answer is left in variables for
-- haproxy.cfg to act on:
--
--   txn.auth_status   200 allow, 401 no valid session, 403 signed in but refused; anything else (the
--                     gateway down, slow, or answering 5xx) must be treated as "fail closed"
--   txn.auth_user, txn.auth_email, txn.auth_groups, txn.auth_user_id
--                     the identity, set only on a 200 (empty when the gateway says nothing)
--   txn.auth_login    on a 401: the sign-in URL with this page as rd, already URL-encoded
--   txn.auth_cookie   on a 200 only, when the gateway renewed the session (session.refresh): its one
--                     Set-Cookie for the session cookie, which haproxy.cfg adds to the response so the
--                     browser's cookie follows the session. Never set from a denied answer; a client
--                     cannot set it (it comes from the gateway's answer alone).
--
-- Every failure (no answer, a Lua error, an identity header sent twice) leaves txn.auth_status at 0.
-- HAProxy 2.6's HTTP client retries a failed or timed-out attempt 3 times (one second apart after a
-- refused connection), so a gateway that is down costs about 3 s, a hung one up to 4 x TIMEOUT_MS.

local TIMEOUT_MS = 1000  -- per attempt; the gateway answers in milliseconds

-- The gateway's session cookie (its cookie.name): the only Set-Cookie passed on from an allowed check.
local SESSION_COOKIE = "gw_session"

-- Client headers the gateway may read (lower case, as HAProxy stores them).
local PASSED = { "cookie", "authorization", "accept", "x-requested-with",
                 "x-http-method-override", "x-http-method", "x-method-override" }

-- The gateway's answer headers and the variables they go to.
local IDENTITY = {
    ["x-auth-request-user"] = "txn.auth_user",
    ["x-auth-request-email"] = "txn.auth_email",
    ["x-auth-request-groups"] = "txn.auth_groups",
    ["x-auth-request-user-id"] = "txn.auth_user_id",
}

-- HAProxy hands header values over as tables indexed from 0; the HTTP client wants plain lists.
local function values(indexed)
    local out = {}
    if indexed == nil then
        return out
    end
    local i = 0
    while indexed[i] ~= nil do
        out[#out + 1] = indexed[i]
        i = i + 1
    end
    return out
end

-- The one value of an answer header: nil when absent, false when sent more than once.
local function single(headers, name)
    local list = values(headers[name])
    if #list > 1 then
        return false
    end
    return list[1]
end

-- The one Set-Cookie of an allowed answer that sets the session cookie, or nil (none, or more than one).
local function session_cookie(headers)
    local found = nil
    for _, value in ipairs(values(headers["set-cookie"])) do
        if value:sub(1, #SESSION_COOKIE + 1) == SESSION_COOKIE .. "=" then
            if found ~= nil then
                return nil
            end
            found = value
        end
    end
    return found
end

local function check_request(txn)
    local client = txn.http:req_get_headers()
    local headers = {}
    for _, name in ipairs(PASSED) do
        local list = values(client[name])
        if #list > 0 then
            headers[name] = list
        end
    end
    local tls = txn.f:ssl_fc()
    headers["x-forwarded-method"] = { txn.sf:method() }
    headers["x-forwarded-proto"] = { (tls == true or tls == 1) and "https" or "http" }
    -- Every Host header (haproxy.cfg lets only one through; two would be refused by the gateway).
    headers["x-forwarded-host"] = values(client["host"])
    headers["x-forwarded-uri"] = { txn.sf:pathq() or "" }
    headers["x-forwarded-for"] = { txn.sf:src() }
    headers["x-real-ip"] = { txn.sf:src() }
    local id = txn.f:unique_id()
    if id ~= nil and id ~= "" then
        headers["x-request-id"] = { id }
    end
    return headers
end

local function ask_gateway(txn, url)
    txn:set_var("txn.auth_status", 0)
    local ok, response = pcall(function()
        return core.httpclient():get{ url = url, headers = check_request(txn), timeout = TIMEOUT_MS }
    end)
    if not ok then
        core.Warning("auth_request: asking the gateway failed: " .. tostring(response))
        return
    end
    if type(response) ~= "table" or type(response.status) ~= "number" then
        return
    end
    local status = response.status
    local headers = response.headers or {}
    if status == 200 then
        local identity = {}
        for name, var in pairs(IDENTITY) do
            local value = single(headers, name)
            if value == false then
                core.Warning("auth_request: the gateway sent " .. name .. " more than once")
                return
            end
            identity[var] = value or ""
        end
        for var, value in pairs(identity) do
            txn:set_var(var, value)
        end
        local cookie = session_cookie(headers)
        if cookie ~= nil then
            txn:set_var("txn.auth_cookie", cookie)
        end
    elseif status == 401 then
        local login = single(headers, "x-auth-request-login")
        if login then
            txn:set_var("txn.auth_login", login)
        end
    end
    txn:set_var("txn.auth_status", status)
end

core.register_action("auth_request", { "http-req" }, ask_gateway, 1)
