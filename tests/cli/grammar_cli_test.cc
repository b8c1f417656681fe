// `agentrt grammar check|bench` end to end through the binary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

struct CliResult {
  int code = -1;
  std::string out;
};

CliResult run_cli(const std::string& args) {
  std::string cmd = std::string(AGENTRT_CLI) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string temp_file(const std::string& name, const std::string& content) {
  auto path = std::filesystem::temp_directory_path() / ("agentrt_grammar_cli_" + name);
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

const std::string kFixtures = std::string(AGENTRT_SOURCE_DIR) + "/tests/";

TEST(GrammarCli, CheckEbnfAcceptAndReject) {
  std::string ebnf = kFixtures + "grammars/fixtures/arithmetic.gbnf";
  CliResult ok =
      run_cli("grammar check --ebnf " + ebnf + " --instance " + temp_file("ok", "1+2=3\n"));
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_EQ(ok.out, "accept\n");
  CliResult bad =
      run_cli("grammar check --ebnf " + ebnf + " --instance " + temp_file("bad", "1+=3\n"));
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_EQ(bad.out.rfind("reject at byte 2: ", 0), 0u) << bad.out;
  CliResult incomplete =
      run_cli("grammar check --ebnf " + ebnf + " --instance " + temp_file("inc", "1+2"));
  EXPECT_EQ(incomplete.code, 1);
  EXPECT_NE(incomplete.out.find("reject at byte 3: unexpected end of input"), std::string::npos)
      << incomplete.out;
}

TEST(GrammarCli, CheckSchemaAndRegex) {
  std::string schema = kFixtures + "cli/fixtures/grammar_person.schema.json";
  CliResult ok = run_cli("grammar check --schema " + schema + " --instance " +
                         temp_file("p1", R"({"name": "Ann", "age": 41})"));
  EXPECT_EQ(ok.code, 0) << ok.out;
  CliResult bad = run_cli("grammar check --schema " + schema + " --instance " +
                          temp_file("p2", R"({"name": "Ann", "age": "41"})"));
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("reject at byte"), std::string::npos);
  EXPECT_EQ(
      run_cli("grammar check --regex '[a-z]+@[a-z]+' --instance " + temp_file("r", "a@b")).code, 0);
}

TEST(GrammarCli, ErrorsExitTwo) {
  CliResult no_args = run_cli("grammar");
  EXPECT_EQ(no_args.code, 2);
  EXPECT_NE(no_args.out.find("usage"), std::string::npos);
  CliResult bad_ebnf = run_cli("grammar check --ebnf " + temp_file("g", "root ::= \"a") +
                               " --instance " + temp_file("i", "a"));
  EXPECT_EQ(bad_ebnf.code, 2);
  EXPECT_NE(bad_ebnf.out.find("1:10"), std::string::npos) << bad_ebnf.out;
}

TEST(GrammarCli, BenchOnAFewMaskBenchFiles) {
  std::string dir = std::string(AGENTRT_SHARED_DATA) + "/maskbench";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no MaskBench data at " << dir;
  std::string tok = std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer/tokenizer.json";
  if (!std::filesystem::exists(tok)) GTEST_SKIP() << "no tokenizer at " << tok;
  CliResult r = run_cli("grammar bench " + dir + " --limit 3 --tokenizer " + tok);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("schemas passing (of 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TBM p50"), std::string::npos);
}

}  // namespace
