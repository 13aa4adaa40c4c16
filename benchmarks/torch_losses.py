"""PyTorch implementations of the AMR loss, for speed comparisons only (torch is not a dependency).

``amr_loss_reference_style`` follows the structure of the original code
(``residue_loss_adaptive_K.py`` of the AMR paper's repository, as described in
SPEC.md section 2): a Python loop over the batch builds the one-hot, the top-K
mask is float64, and the residue is computed in float64.
``amr_loss_vectorised`` is the same loss written as a PyTorch user would
write it today: one scatter for the one-hot, all float32. Both return the
batch-mean training loss; ``loss_speed.py`` checks them against the reference
vectors before timing them.
"""

import torch
import torch.nn.functional as F


def amr_loss_reference_style(logits, labels, start_age=0, lambda_mean=0.2, lambda_residue=0.05, eps=1e-3):
  n, num_classes = logits.shape
  probs = torch.softmax(logits, dim=1)
  ages = torch.arange(start_age, start_age + num_classes, dtype=torch.float32)
  mean = (probs * ages).sum(1)
  mean_loss = ((mean - labels.float()) ** 2).mean() / 2.0
  one_hot = torch.zeros(n, num_classes)
  for i in range(n):  # one small write per sample, as in the original
    one_hot[i, int(labels[i]) - start_age] = 1
  true_prob = (probs * one_hot).sum(1, keepdim=True)
  mask = (probs >= true_prob).double().detach()
  residue_probs = probs.double() * (1 - mask)
  residue = -((residue_probs + eps) * torch.log(residue_probs + eps)).sum(1).mean()
  ce = F.cross_entropy(logits, labels.long() - start_age)
  return ce + lambda_mean * mean_loss + lambda_residue * residue


def amr_loss_vectorised(logits, labels, start_age=0, lambda_mean=0.2, lambda_residue=0.05, eps=1e-3):
  num_classes = logits.shape[1]
  log_probs = torch.log_softmax(logits, dim=1)
  probs = log_probs.exp()
  ages = torch.arange(start_age, start_age + num_classes, dtype=logits.dtype, device=logits.device)
  mean = probs @ ages
  classes = (labels.long() - start_age).unsqueeze(1)
  true_logit = logits.gather(1, classes)
  in_top = (logits >= true_logit).detach()
  shifted = torch.where(in_top, torch.zeros_like(probs), probs) + eps
  residue = -(shifted * shifted.log()).sum(1)
  ce = -log_probs.gather(1, classes).squeeze(1)
  per_example = ce + lambda_mean * 0.5 * (mean - labels.to(logits.dtype)) ** 2 + lambda_residue * residue
  return per_example.mean()
