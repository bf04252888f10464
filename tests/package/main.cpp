// A user's program against the installed (or embedded) trainloop: it trains a
// small model and checks what crosses the library's boundary: exceptions
// thrown on either side and caught on the other, and dynamic_cast.
// Argument: where to write the CSV log (optional).
#include <trainloop/trainloop.h>

#include <cstdio>
#include <memory>
#include <vector>

int main(int argc, char** argv) {
  namespace tl = trainloop;

  // Thrown inside the library, caught here.
  try {
    tl::data::read_csv_table("/nonexistent/table.csv", tl::data::CsvOptions("y"));
    std::printf("consumer: no trainloop::Error for a missing file\n");
    return 1;
  } catch (const tl::Error& error) {
    std::printf("consumer: caught trainloop::Error: %s\n", error.what());
  }

  // Made inside the library, cast here.
  std::shared_ptr<tl::Callback> made = tl::callbacks::checkpoint("consumer-checkpoints");
  if (std::dynamic_pointer_cast<tl::callbacks::CheckpointCallback>(made) == nullptr) {
    std::printf("consumer: dynamic_cast to CheckpointCallback failed\n");
    return 1;
  }

  std::vector<std::shared_ptr<tl::Callback>> callbacks;
  if (argc > 1) callbacks.push_back(tl::callbacks::csv_logger(argv[1]));
  // Thrown here, caught inside the library: fit stops at epoch 20 of 25.
  callbacks.push_back(tl::callbacks::lambda([](tl::Event event, tl::TrainingLoop& loop) {
    if (event == tl::Event::epoch_start && loop.state().epoch == 20) throw tl::CancelFit();
  }));

  torch::manual_seed(0);
  const auto inputs = torch::randn({64, 3});
  const auto targets = inputs.sum(1, /*keepdim=*/true);
  torch::nn::Linear model(3, 1);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  tl::TrainingLoop loop(tl::data::Epochs(tl::data::TensorDataset(inputs, targets), 16), nullptr,
                        optimizer, tl::losses::mse, {}, callbacks);
  const tl::FitStatus status = loop.fit(model, 25);
  if (status != tl::FitStatus::cancelled) {
    std::printf("consumer: fit did not stop at the CancelFit thrown by a callback\n");
    return 1;
  }
  const double loss = loop.state().metric("loss");
  std::printf("consumer: cancelled at epoch %lld, final loss %g\n",
              static_cast<long long>(loop.state().epoch), loss);
  return loss < 0.01 ? 0 : 1;
}
