-- wrk -s: the request of bench/http_peers' "realistic" row, GET /realistic with six header
-- fields (Host, which wrk takes from the URL, and these five): 200 bytes when the URL's port
-- has five digits, as http_peers' ports do.
wrk.method = "GET"
wrk.path = "/realistic"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64)"
wrk.headers["Accept"] = "text/plain,*/*"
wrk.headers["Accept-Language"] = "en-US,en"
wrk.headers["Accept-Encoding"] = "identity"
wrk.headers["Cookie"] = "session=012345678"
