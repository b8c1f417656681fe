// http_get: libcurl, hosts from an allow-list ("*" allows any), http(s) only, at most 3
// redirects (each target checked again), size and time limits, and no loopback, private,
// link-local or unspecified addresses unless the context explicitly allows private access (the
// connected address is checked, so DNS tricks do not get around it).
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <string>

#include "tools/builtins.h"

namespace agentrt::tools {

namespace {

using ojson = nlohmann::ordered_json;

bool is_private_address(const std::string& ip) {
  in_addr v4{};
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    const uint32_t a = ntohl(v4.s_addr);
    return (a >> 24) == 127 || (a >> 24) == 10 || (a >> 24) == 0 || (a >> 20) == (172 << 4 | 1) ||
           (a >> 16) == (192 << 8 | 168) || (a >> 16) == (169 << 8 | 254) ||
           (a >> 22) == (100 << 2 | 1) || a == 0xFFFFFFFF;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    const uint8_t* b = v6.s6_addr;
    const bool loopback = IN6_IS_ADDR_LOOPBACK(&v6), unspecified = IN6_IS_ADDR_UNSPECIFIED(&v6);
    const bool ula = (b[0] & 0xFE) == 0xFC, link_local = b[0] == 0xFE && (b[1] & 0xC0) == 0x80;
    const bool mapped = IN6_IS_ADDR_V4MAPPED(&v6);
    if (mapped) {
      char buf[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, b + 12, buf, sizeof buf);
      return is_private_address(buf);
    }
    return loopback || unspecified || ula || link_local;
  }
  return true;  // unparseable: refuse
}

struct Transfer {
  std::string body;
  size_t cap;
  bool truncated = false;
  bool allow_private;
  std::string refused_ip;
  const std::atomic<bool>* cancel;
};

size_t on_data(char* ptr, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (t->body.size() + len > t->cap) {
    t->body.append(ptr, t->cap - t->body.size());
    t->truncated = true;
    return 0;  // stop the transfer
  }
  t->body.append(ptr, len);
  return len;
}

// Checked before each connect, on the address DNS actually returned.
curl_socket_t on_open_socket(void* user, curlsocktype, struct curl_sockaddr* address) {
  auto* t = static_cast<Transfer*>(user);
  char ip[INET6_ADDRSTRLEN] = "";
  if (address->family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&address->addr)->sin_addr, ip, sizeof ip);
  } else if (address->family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&address->addr)->sin6_addr, ip, sizeof ip);
  }
  if (!t->allow_private && is_private_address(ip)) {
    t->refused_ip = ip;
    return CURL_SOCKET_BAD;
  }
  return ::socket(address->family, address->socktype, address->protocol);
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->cancel && t->cancel->load() ? 1 : 0;
}

std::string host_of(const std::string& url, std::string* scheme) {
  std::unique_ptr<CURLU, void (*)(CURLU*)> u(curl_url(), curl_url_cleanup);
  if (curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK)
    throw std::invalid_argument("invalid URL '" + url + "'");
  char* host = nullptr;
  char* sch = nullptr;
  curl_url_get(u.get(), CURLUPART_HOST, &host, 0);
  curl_url_get(u.get(), CURLUPART_SCHEME, &sch, 0);
  std::string h = host ? host : "";
  if (scheme) *scheme = sch ? sch : "";
  curl_free(host);
  curl_free(sch);
  return h;
}

ToolResult http_get(const nlohmann::json& a, const ToolContext& c) {
  std::string url = a["url"].get<std::string>();
  const size_t cap = std::min<size_t>(a.value("max_bytes", size_t{1} << 20), size_t{8} << 20);
  for (int hop = 0; hop <= 3; ++hop) {
    std::string scheme;
    const std::string host = host_of(url, &scheme);
    if (scheme != "http" && scheme != "https")
      return ToolResult::error("execution", "only http and https URLs are allowed");
    bool allowed = false;
    for (const auto& h : c.http_allow_hosts) allowed = allowed || h == "*" || h == host;
    if (!allowed)
      return ToolResult::error("execution", "host '" + host + "' is not in the allow-list");
    std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
    Transfer t{"", cap, false, c.http_allow_private, "", c.cancel};
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETDATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(c.timeout.count()));
    curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(std::min<int64_t>(c.timeout.count(), 10000)));
    curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_USERAGENT, "agentrt-http_get/0.1");
    const CURLcode rc = curl_easy_perform(curl.get());
    if (!t.refused_ip.empty())
      return ToolResult::error(
          "execution",
          "refused: " + host + " resolves to a private or loopback address (" + t.refused_ip + ")");
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && t.truncated)) {
      return ToolResult::error(rc == CURLE_OPERATION_TIMEDOUT
                                   ? "timeout"
                                   : (rc == CURLE_ABORTED_BY_CALLBACK ? "cancelled" : "execution"),
                               std::string("http_get failed: ") + curl_easy_strerror(rc));
    }
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    char* location = nullptr;
    curl_easy_getinfo(curl.get(), CURLINFO_REDIRECT_URL, &location);
    if (status >= 300 && status < 400 && location) {
      url = location;
      continue;
    }
    ToolResult r;
    r.ok = status < 400;
    if (!r.ok) r.error_kind = "execution";
    r.content = t.body;
    r.truncated = t.truncated;
    if (t.truncated) r.content += "\n[... truncated at " + std::to_string(cap) + " bytes]";
    r.data = nlohmann::json{{"status", status}, {"url", url}, {"bytes", t.body.size()}};
    return r;
  }
  return ToolResult::error("execution", "too many redirects (limit 3)");
}

}  // namespace

void register_http_tools(ToolRegistry& r, const std::vector<std::string>& names) {
  const auto want = [&](const char* n) {
    return names.empty() || std::find(names.begin(), names.end(), n) != names.end();
  };
  if (!want("http_get")) return;
  r.add(
      {"http_get", "Fetch a URL over HTTP(S) (hosts from the workflow's allow-list only).",
       ojson::parse(
           R"({"type":"object","properties":{"url":{"type":"string","minLength":1},"max_bytes":{"type":"integer","minimum":1}},"required":["url"]})")},
      http_get);
}

}  // namespace agentrt::tools
