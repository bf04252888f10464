#include <trainloop/trainloop.h>

#include <cstdio>

int main() {
  namespace tl = trainloop;
  torch::manual_seed(0);
  const auto inputs = torch::randn({64, 3});
  const auto targets = inputs.sum(1, /*keepdim=*/true);
  torch::nn::Linear model(3, 1);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  tl::TrainingLoop loop(tl::data::Epochs(tl::data::TensorDataset(inputs, targets), 16), nullptr,
                        optimizer, tl::losses::mse);
  loop.fit(model, 20);
  const double loss = loop.state().metric("loss");
  std::printf("consumer: final loss %g\n", loss);
  return loss < 0.01 ? 0 : 1;
}
