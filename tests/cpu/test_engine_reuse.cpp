// Tests of GenerateOptions::reuse_cache: a request continues from the KV entries its slot
// computed in the previous call (a chat's history) and gives the tokens and logits of computing
// everything again, whatever the pipeline shape.
#include <gtest/gtest.h>

#include <vector>

#include "common/test_util.hpp"
#include "conveyor/engine.hpp"

namespace conveyor {
namespace {

class ReuseCache : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { test::make_tiny_model(dir_.path(), 4, 21); }

  Engine open() const { return Engine::open(dir_.path(), EngineOptions{.n_stages = GetParam()}); }

  static Request request(std::vector<int32_t> prompt, int64_t max_new_tokens) {
    return Request{
        .prompt = std::move(prompt), .max_new_tokens = max_new_tokens, .stop_at_eos = false};
  }

  test::TempDir dir_;
};

TEST_P(ReuseCache, AContinuedConversationMatchesComputingItAgain) {
  Engine engine = open();
  const GenerateOptions reuse{.return_logits = true, .reuse_cache = true};
  const std::vector<int32_t> first = {5, 17, 99, 3, 250, 7, 7, 128, 64, 311};
  const GenerateResult turn1 = engine.generate({request(first, 6)}, reuse);
  EXPECT_EQ(turn1.requests[0].reused_tokens, 0);

  // The next turn: the history (prompt + answer) and new tokens.
  std::vector<int32_t> second = first;
  second.insert(second.end(), turn1.requests[0].tokens.begin(), turn1.requests[0].tokens.end());
  second.insert(second.end(), {42, 43, 44});
  const GenerateResult turn2 = engine.generate({request(second, 5)}, reuse);
  // Everything but the last answer token (never fed back) was in the cache.
  EXPECT_EQ(turn2.requests[0].reused_tokens, static_cast<int64_t>(first.size()) + 6 - 1);
  EXPECT_EQ(turn2.prefill_tokens,
            static_cast<int64_t>(second.size()) - turn2.requests[0].reused_tokens);

  const GenerateResult fresh = open().generate({request(second, 5)}, {.return_logits = true});
  EXPECT_EQ(turn2.requests[0].tokens, fresh.requests[0].tokens);
  EXPECT_LE(test::max_relative_error(turn2.requests[0].logits, fresh.requests[0].logits), 1e-5);

  // A prompt that diverges early keeps only the shared prefix.
  std::vector<int32_t> other = {5, 17, 99, 1, 2, 3};
  const GenerateResult turn3 = engine.generate({request(other, 3)}, reuse);
  EXPECT_EQ(turn3.requests[0].reused_tokens, 3);
  const GenerateResult fresh3 = open().generate({request(other, 3)}, {.return_logits = true});
  EXPECT_EQ(turn3.requests[0].tokens, fresh3.requests[0].tokens);
  EXPECT_LE(test::max_relative_error(turn3.requests[0].logits, fresh3.requests[0].logits), 1e-5);

  // The same prompt again recomputes only its last token.
  const GenerateResult again = engine.generate({request(other, 3)}, reuse);
  EXPECT_EQ(again.requests[0].reused_tokens, static_cast<int64_t>(other.size()) - 1);
  EXPECT_EQ(again.requests[0].tokens, turn3.requests[0].tokens);

  // Without reuse_cache every slot starts empty.
  const GenerateResult plain = engine.generate({request(other, 3)}, {.return_logits = true});
  EXPECT_EQ(plain.requests[0].reused_tokens, 0);
  EXPECT_EQ(plain.requests[0].tokens, turn3.requests[0].tokens);
}

TEST_P(ReuseCache, EachSlotReusesItsOwnHistoryInABatch) {
  Engine engine = open();
  const GenerateOptions reuse{.reuse_cache = true};
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5}, {9, 8, 7}};
  const GenerateResult turn1 =
      engine.generate({request(prompts[0], 2), request(prompts[1], 2)}, reuse);
  std::vector<Request> next;
  for (size_t r = 0; r < 2; ++r) {
    std::vector<int32_t> p = prompts[r];
    p.insert(p.end(), turn1.requests[r].tokens.begin(), turn1.requests[r].tokens.end());
    p.push_back(77);
    next.push_back(request(p, 3));
  }
  const GenerateResult turn2 = engine.generate(next, reuse);
  const GenerateResult fresh = open().generate(next);
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(turn2.requests[r].reused_tokens, static_cast<int64_t>(prompts[r].size()) + 1);
    EXPECT_EQ(turn2.requests[r].tokens, fresh.requests[r].tokens);
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, ReuseCache, ::testing::Values(1, 2, 3));

}  // namespace
}  // namespace conveyor
