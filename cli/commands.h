// The agentrt subcommands. Each lives in its own cmd_<name>.cc and receives the
// arguments after the subcommand name. They return the process exit code and may
// throw; main() turns an exception into a message on stderr and exit code 2.
#pragma once

#include <string>
#include <vector>

namespace agentrt::cli {

using Args = std::vector<std::string>;

int cmd_tokenize(const Args& args);    // engine tokenizer
int cmd_detokenize(const Args& args);  // engine tokenizer
int cmd_logits(const Args& args);      // engine forward pass
int cmd_generate(const Args& args);    // engine + sampler
int cmd_model(const Args& args);       // `model init`
int cmd_grammar(const Args& args);     // `grammar check|bench`
int cmd_sandbox(const Args& args);     // `sandbox run|doctor`
int cmd_tools(const Args& args);       // `tools list|call`
int cmd_run(const Args& args);         // workflow runner
int cmd_chat(const Args& args);        // interactive session
int cmd_bench(const Args& args);       // `bench toolcalls`
int cmd_serve(const Args& args);       // WebSocket + HTTP server

}  // namespace agentrt::cli
