// The same streamed request twice through the official openai Node SDK: the first is a cache
// MISS answered by the provider, the second a HIT replayed from the cache. Prints what the SDK
// assembled, for tests/e2e/test_cache_e2e.py to compare.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.FLOOPY_BASE_URL,
  apiKey: process.env.FLOOPY_API_KEY,
  maxRetries: 0,
});

async function ask() {
  const { data: stream, response } = await client.chat.completions
    .create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: process.env.FLOOPY_PROMPT }],
      stream: true,
      stream_options: { include_usage: true },
    })
    .withResponse();
  let text = "";
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  return {
    cache: response.headers.get("floopy-cache"),
    tier: response.headers.get("floopy-cache-tier"),
    text,
    usage,
    chunks,
  };
}

const first = await ask();
const second = await ask();
console.log(JSON.stringify([first, second]));
