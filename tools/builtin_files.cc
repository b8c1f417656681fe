// read_file, write_file, edit_file, list_dir, search_files: in-process, confined to the workspace.
#include <re2/re2.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "tools/builtins.h"
#include "tools/workspace_paths.h"

namespace agentrt::tools {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open '" + p.filename().string() + "'");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

ToolResult ok(std::string content) {
  ToolResult r;
  r.content = std::move(content);
  return r;
}

}  // namespace

void register_file_tools(ToolRegistry& r, const std::vector<std::string>& names) {
  const auto want = [&](const char* n) {
    return names.empty() || std::find(names.begin(), names.end(), n) != names.end();
  };
  if (want("read_file")) {
    r.add(
        {"read_file",
         "Read a text file in the workspace. Optional 1-based line offset and line limit.",
         ojson::parse(
             R"({"type":"object","properties":{"path":{"type":"string"},"offset":{"type":"integer","minimum":1},"limit":{"type":"integer","minimum":1}},"required":["path"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          const auto p = confine_path(c.workspace, a["path"]);
          if (fs::is_directory(p))
            return ToolResult::error("execution",
                                     "'" + a["path"].get<std::string>() + "' is a directory");
          std::istringstream in(read_all(p));
          const int64_t offset = a.value("offset", 1), limit = a.value("limit", int64_t{1} << 40);
          std::string out, line;
          for (int64_t n = 1; std::getline(in, line); ++n) {
            if (n >= offset && n < offset + limit) out += line + "\n";
          }
          return ok(out);
        });
  }
  if (want("write_file")) {
    r.add(
        {"write_file", "Create or overwrite a file in the workspace with the given content.",
         ojson::parse(
             R"({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}},"required":["path","content"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          const auto p = confine_path(c.workspace, a["path"], true);
          if (c.limits.file_size_bytes &&
              a["content"].get<std::string>().size() > c.limits.file_size_bytes) {
            return ToolResult::error("execution", "content exceeds the file size limit");
          }
          fs::create_directories(p.parent_path());
          std::ofstream out(p, std::ios::binary | std::ios::trunc);
          out << a["content"].get<std::string>();
          if (!out)
            return ToolResult::error("execution",
                                     "could not write '" + a["path"].get<std::string>() + "'");
          return ok("wrote " + std::to_string(a["content"].get<std::string>().size()) +
                    " bytes to " + a["path"].get<std::string>());
        });
  }
  if (want("edit_file")) {
    r.add(
        {"edit_file",
         "Replace one exact occurrence of old_string with new_string in a workspace file. Fails "
         "unless the match is unique.",
         ojson::parse(
             R"({"type":"object","properties":{"path":{"type":"string"},"old_string":{"type":"string","minLength":1},"new_string":{"type":"string"}},"required":["path","old_string","new_string"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          const auto p = confine_path(c.workspace, a["path"]);
          std::string text = read_all(p);
          const std::string& old_s = a["old_string"].get_ref<const std::string&>();
          const size_t first = text.find(old_s);
          if (first == std::string::npos)
            return ToolResult::error("execution",
                                     "old_string not found in " + a["path"].get<std::string>());
          if (text.find(old_s, first + 1) != std::string::npos) {
            return ToolResult::error("execution", "old_string occurs more than once in " +
                                                      a["path"].get<std::string>() +
                                                      "; include more context");
          }
          text.replace(first, old_s.size(), a["new_string"].get<std::string>());
          std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
          return ok("edited " + a["path"].get<std::string>());
        });
  }
  if (want("list_dir")) {
    r.add({"list_dir", "List a directory of the workspace (default: its root).",
           ojson::parse(R"({"type":"object","properties":{"path":{"type":"string"}}})")},
          [](const nlohmann::json& a, const ToolContext& c) {
            const auto p = confine_path(c.workspace, a.value("path", "."));
            std::vector<std::string> names;
            for (const auto& e : fs::directory_iterator(p))
              names.push_back(e.path().filename().string() + (e.is_directory() ? "/" : ""));
            std::sort(names.begin(), names.end());
            std::string out;
            for (const auto& n : names) out += n + "\n";
            ToolResult res = ok(out);
            res.data = names;
            return res;
          });
  }
  if (want("search_files")) {
    r.add(
        {"search_files",
         "Search workspace files for an RE2 regular expression; returns path:line: text matches.",
         ojson::parse(
             R"({"type":"object","properties":{"pattern":{"type":"string","minLength":1},"path":{"type":"string"},"max_results":{"type":"integer","minimum":1,"maximum":1000}},"required":["pattern"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          RE2 re(a["pattern"].get<std::string>(), RE2::Quiet);
          if (!re.ok()) return ToolResult::error("execution", "invalid pattern: " + re.error());
          const auto base = confine_path(c.workspace, a.value("path", "."));
          const fs::path root = fs::canonical(c.workspace);
          const int64_t max = a.value("max_results", 100);
          int64_t found = 0, files = 0;
          std::string out;
          for (auto it = fs::recursive_directory_iterator(
                   base, fs::directory_options::skip_permission_denied);
               it != fs::recursive_directory_iterator(); ++it) {
            if (c.cancel && c.cancel->load()) return ToolResult::error("cancelled", "cancelled");
            if (it->is_symlink() || !it->is_regular_file() || it->file_size() > (8 << 20)) continue;
            if (++files > 10000) break;
            std::ifstream in(it->path(), std::ios::binary);
            std::string line;
            for (int n = 1; std::getline(in, line); ++n) {
              if (!RE2::PartialMatch(line, re)) continue;
              out += it->path().lexically_relative(root).string() + ":" + std::to_string(n) + ": " +
                     line.substr(0, 300) + "\n";
              if (++found >= max) {
                out += "[... stopped at max_results=" + std::to_string(max) + "]\n";
                return ok(out);
              }
            }
          }
          return ok(found ? out : "no matches\n");
        });
  }
}

}  // namespace agentrt::tools
