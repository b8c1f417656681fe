#include "grammars/schema_formats.h"

namespace agentrt::grammars {
namespace {

// Month-day pairs that exist in every year, plus 02-29 handled by the leap-year date below.
constexpr std::string_view kMonthDay =
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|"
    "02-(?:0[1-9]|1[0-9]|2[0-8]))";
// Years divisible by 4 and not by 100, or by 400 (four digits).
constexpr std::string_view kLeapYear =
    "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)";
constexpr std::string_view kTime =
    "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?(?:[Zz]|[+\\-](?:[01][0-9]|2[0-3]):[0-"
    "5][0-9])";
// RFC 3986 characters allowed in paths, queries and fragments (pct-encoded separately).
constexpr std::string_view kUriChar = "(?:[A-Za-z0-9\\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})";
constexpr std::string_view kHostLabel = "[A-Za-z0-9](?:[A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?";

std::string date() {
  return "(?:[0-9]{4}-" + std::string(kMonthDay) + "|" + std::string(kLeapYear) + "-02-29)";
}

std::string ipv6() {
  const std::string h = "[0-9a-fA-F]{1,4}";
  return "(?:(?:" + h + ":){7}" + h + "|(?:" + h + ":){1,7}:|(?:" + h + ":){1,6}:" + h +
         "|(?:" + h + ":){1,5}(?::" + h + "){1,2}|(?:" + h + ":){1,4}(?::" + h + "){1,3}|(?:" + h +
         ":){1,3}(?::" + h + "){1,4}|(?:" + h + ":){1,2}(?::" + h + "){1,5}|" + h + ":(?::" + h +
         "){1,6}|:(?:(?::" + h + "){1,7}|:))";
}

std::string uri() {
  const std::string c(kUriChar);
  // scheme ":" then path/query characters, then at most one fragment.
  return "[A-Za-z][A-Za-z0-9+\\-.]*:" + c + "*(?:#" + c + "*)?";
}

}  // namespace

std::optional<std::string> format_regex(std::string_view format) {
  if (format == "date-time") {
    return "^" + date() + "[Tt]" + std::string(kTime) + "$";
  }
  if (format == "date") return "^" + date() + "$";
  if (format == "time") return "^" + std::string(kTime) + "$";
  if (format == "duration") {
    const std::string time = "T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)";
    return "^P(?:(?:[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)(?:" + time +
           ")?|" + time + "|[0-9]+W)$";
  }
  if (format == "email") {
    const std::string atom = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-]+";
    const std::string label(kHostLabel);
    return "^" + atom + "(?:\\." + atom + ")*@" + label + "(?:\\." + label + ")*$";
  }
  if (format == "hostname") {
    const std::string label(kHostLabel);
    return "^" + label + "(?:\\." + label + ")*$";
  }
  if (format == "ipv4") {
    const std::string octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    return "^" + octet + "(?:\\." + octet + "){3}$";
  }
  if (format == "ipv6") return "^" + ipv6() + "$";
  if (format == "uuid") {
    return "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
  }
  if (format == "uri") return "^" + uri() + "$";
  if (format == "uri-reference") {
    const std::string c(kUriChar);
    // A relative reference's first segment has no ':' (else it would read as a scheme).
    const std::string nocolon = "(?:[A-Za-z0-9\\-._~!$&'()*+,;=@]|%[0-9A-Fa-f]{2})";
    const std::string relative =
        "(?:/" + c + "*|" + nocolon + "+(?:[/?]" + c + "*)?|\\?" + c + "*)?(?:#" + c + "*)?";
    return "^(?:" + uri() + "|" + relative + ")$";
  }
  return std::nullopt;
}

bool is_unsupported_format(std::string_view format) {
  return format == "regex" || format == "json-pointer" || format == "relative-json-pointer" ||
         format == "uri-template" || format == "iri" || format == "iri-reference" ||
         format == "idn-email" || format == "idn-hostname" || format == "color";
}

}  // namespace agentrt::grammars
