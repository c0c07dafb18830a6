// The field-level rules of the front's HTTP/1.1 framing (http_framing.cpp): which fields are
// hop-by-hop, set by the front or refused in a trailer, how codings are counted and written,
// and the small writers of the re-framed message. Each runs in time linear in its input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_framing.hpp"

namespace handoff::proxy::field_rules {

void append_number(std::string& out, std::uint64_t n, int base = 10);

void append_field(std::string& out, std::string_view name, std::string_view value);

// One chunk per piece of body received: the chunk sizes the sender chose do not matter, and
// this needs no state across calls.
void append_chunk(std::string& out, std::string_view data);

bool starts_with_nocase(std::string_view text, std::string_view prefix);

std::string_view trim(std::string_view s);

// Hop-by-hop fields (RFC 9110 7.6.1) and the framing fields the relay writes itself.
bool hop_by_hop(bhttp::field name, std::string_view text);

// Marks the fields whose names a Connection field lists (RFC 9110 7.6.1: hop-by-hop, not passed
// on). The distinct field names go in a hash table (repeats chained behind the first), then
// each Connection token is looked up once: time linear in the header, where checking every
// field against every token cost fields x tokens (a 14 KB header of both cost 600 times a
// plain one). Nothing is allocated: the fields are at most max_fields.
void mark_connection_named(const std::vector<field_ref>& fields, named_fields& named);

// Fields a trailer section may not carry on (RFC 9110 6.5.1): framing, routing, hop-by-hop.
bool forbidden_in_trailer(bhttp::field name, std::string_view text);

// Counts the codings of a Transfer-Encoding line, the chunked ones, and whether the last
// one so far is chunked.
void count_codings(std::string_view value, coding_count& c);

// "Transfer-Encoding: " and the codings the upstream applied before its final chunked, as it
// listed them (gzip, chunked): the relay re-frames the chunks and keeps the other codings,
// which the client undoes (RFC 9112 6.1).
void append_codings(std::string& out, const std::vector<field_ref>& fields, int count);

// With forwarded headers on: the fields the front sets or removes, which the client must not
// choose. Forwarded and X-Forwarded-For are merged (the client's entries first, ours last);
// X-Forwarded-Proto is replaced; X-Forwarded-Host, X-Real-IP and True-Client-IP, which apps
// that trust a proxy read instead of Host or the peer's address, are removed; and the
// '_'-spelled variants of all of these are removed.
bool set_by_front(std::string_view name);

bool valid_host(std::string_view host);

bool valid_target(bhttp::verb method, std::string_view target);

// Obsolete line folding (RFC 9112 5.2): a line of the header that begins with SP or HTAB.
// Beast unfolds such lines; a front refuses them instead, as another parser may not unfold.
bool has_obs_fold(std::string_view message);

void append_forwarded_for(std::string& out, std::string_view address);

}  // namespace handoff::proxy::field_rules
