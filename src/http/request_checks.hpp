// Internal: what handoff::http asks of a request's framing and of a handler's response beyond
// what Beast's parser and serializer check (RFC 9112, RFC 9110). Each refusal names the answer
// the server gives; every one of them closes the connection afterwards.
//
// Invariants: a request is handed to its handler only once check_request_header() said ok, so
// its body was framed by Content-Length or by a final "chunked" and nothing else, and an
// HTTP/1.1 request has exactly one valid Host. Each check is one pass over the fields, without
// allocation: it is on the path of every request.
#pragma once

#include <boost/beast/core/string.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>

#include "handoff/http/server.hpp"

namespace handoff::http {

enum class request_verdict {
  ok,
  bad_request,      // 400: ambiguous or faulty framing, a missing, repeated or invalid Host
  too_many_fields,  // 431: more than server_options::max_header_fields
  not_implemented,  // 501: a transfer coding the server does not decode (gzip, chunked)
};

// The request's header, once Beast has parsed it.
request_verdict check_request_header(const request& req, std::size_t max_fields);
// After a chunked body: Beast adds the trailer's fields to the request's, which count too.
bool within_field_limit(const request& req, std::size_t max_fields);

// Beast's parser keeps a chunk's extensions only while it parses the chunk line (the read
// buffer's max_size bounds one line), but a client may send them on every chunk: together, the
// extensions of one request may take `left` bytes (max_header_bytes), as header fields may;
// beyond, the request is refused with 400 (bad_chunk_extension).
struct chunk_extension_budget {
  std::size_t left = 0;
  void operator()(std::uint64_t size, boost::beast::string_view extensions,
                  boost::system::error_code& ec);
};

// Frames a handler's response: Content-Length from its body (or chunked), as Beast's
// prepare_payload() does, except where RFC 9110 8.6 forbids it: a 204 carries neither
// Content-Length nor Transfer-Encoding, and a 304 only the Content-Length its handler set (that
// of the 200 it stands for), none made up here. False, and `res` unchanged: the response
// cannot be sent (a 1xx as the final response, or a 204 or 304 with a body), where
// prepare_payload() would throw; the server answers 500 instead.
bool prepare_response(response& res);

}  // namespace handoff::http
