// The official `openai` npm client against `agentrt serve`: a tool-calling chat, not streamed
// and streamed. Usage: node client.mjs BASE_URL API_KEY
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey });
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string", maxLength: 12 } }, required: ["city"] },
  },
}];
const messages = [{ role: "user", content: "What is the weather in Paris?" }];

const models = await client.models.list();
if (!models.data.length) throw new Error("no models listed");

const plain = await client.chat.completions.create({ model: "agentrt", messages, tools, tool_choice: "required", parallel_tool_calls: false, max_tokens: 256, seed: 3 });
const call = plain.choices[0].message.tool_calls?.[0];
if (!call || call.function.name !== "get_weather") throw new Error("no tool call: " + JSON.stringify(plain));
const args = JSON.parse(call.function.arguments);
if (typeof args.city !== "string") throw new Error("bad arguments: " + call.function.arguments);
if (plain.choices[0].finish_reason !== "tool_calls") throw new Error("finish_reason " + plain.choices[0].finish_reason);

const stream = await client.chat.completions.create({ model: "agentrt", messages, tools, tool_choice: "required", parallel_tool_calls: false, max_tokens: 256, stream: true, seed: 4 });
let name = "", argText = "", finish = null;
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (!choice) continue;
  for (const tc of choice.delta.tool_calls ?? []) {
    if (tc.function?.name) name += tc.function.name;
    if (tc.function?.arguments) argText += tc.function.arguments;
  }
  if (choice.finish_reason) finish = choice.finish_reason;
}
if (name !== "get_weather" || finish !== "tool_calls") throw new Error(`stream: name=${name} finish=${finish}`);
JSON.parse(argText);

// Feed the result back and get a final (random-model) answer.
const followup = await client.chat.completions.create({
  model: "agentrt", max_tokens: 16, tool_choice: "none", tools,
  messages: [...messages, plain.choices[0].message, { role: "tool", tool_call_id: call.id, content: "21 C, sunny" }],
});
if (followup.choices[0].message.tool_calls?.length) throw new Error("tool_choice none still called a tool");
console.log("openai client: ok (plain, streamed, tool result round trip)");
