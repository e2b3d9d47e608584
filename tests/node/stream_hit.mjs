// One streamed request through the official openai Node SDK. Prints what the SDK assembled;
// tests/e2e/test_cache_e2e.py runs it twice (a cache MISS answered by the provider, then, once
// the answer's cache write has landed, a HIT replayed from the cache) and compares the two.
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

console.log(JSON.stringify(await ask()));
